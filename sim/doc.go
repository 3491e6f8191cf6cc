// Package sim is a simulated Deepgram engine: it speaks the real Deepgram
// API (pre-recorded and streaming STT, Flux, text-to-speech, the voice agent,
// text intelligence, models and the self-hosted status endpoint) over real
// sockets, for local runs, tests, chaos and load tests. It is honest about
// being a simulation: its models are named sim-nova and sim-aura and every
// response and handshake carries "X-Sim-Engine: <region>".
//
// # Hearing words: the audio encoding
//
// Audio is linear16: signed 16-bit little-endian PCM, mono (with several
// channels only channel 0 is heard). Instead of recognising speech the
// engine decodes words placed in the audio by [Synthesize]:
//
//   - silence is zero samples; a word is a run of non-zero samples;
//   - a run opens with the marker sample 0x4744 (the bytes "DG"), then one
//     sample holding the text's length n in UTF-8 bytes (1..[MaxWordBytes]),
//     then n samples 0x100+byte, one per text byte; any non-zero samples
//     (Synthesize writes a 500 Hz square wave) pad the run to the word's end;
//   - the word starts at the marker's sample index and ends (exclusively) at
//     the first zero sample after its text; times are index/sample_rate
//     seconds since the stream began, so times that are whole samples are
//     heard exactly.
//
// A run that does not open with the marker, a bad length or text sample, or
// a run that ends before its text is undecodable ([ErrUndecodable]):
// streams close with 1008 "DATA-0000", pre-recorded answers 400. A word
// still sounding when the audio ends ends there; one cut off inside its
// text is dropped. The decoder is a streaming state machine: audio may come
// in chunks of any size, odd byte counts included. A leading RIFF/WAVE
// header is detected and skipped, and its sample rate and channel count are
// used; otherwise the query's sample_rate (default 16000) and channels
// (default 1) are. Only encoding=linear16 (or none) is accepted; other
// encodings are answered with 400 rather than misheard.
//
// # When streaming results are sent (/v1/listen)
//
// Every decision is made in audio time, so results do not depend on how
// the client chunks its audio. Each result covers a window that starts where
// the previous final ended (0 at first): start and duration are that window.
//
//   - With interim_results=true, each completed word sends an interim result
//     (is_final false) with the words since the last final, ending at the
//     word's end.
//   - Once a word is followed by endpointing ms of silence (query; default
//     10, "false" or 0 disables), a final with speech_final true covers the
//     window up to that point (word end + endpointing).
//   - Finalize sends a final with from_finalize true covering the audio
//     received so far, or up to the start of a word still sounding (that
//     word goes to the next result). It is sent even when empty.
//   - CloseStream (or an empty binary frame) ends the audio: a final covers
//     whatever is left (if any audio or words are), then Metadata, then
//     close 1000.
//   - vad_events=true sends SpeechStarted at the start of every word.
//   - With interim_results=true and utterance_end_ms=N, UtteranceEnd is sent
//     once N ms of silence follow the last word (once per silence; after the
//     final when both fall on the same sample).
//
// No audio or text for Options.SilenceTimeout closes 1011 "NET-0001";
// KeepAlive counts only once audio has been heard. Unknown text messages are
// ignored.
//
// # The other streams and endpoints
//
//   - GET /v2/listen (Flux) sends Connected, then per completed word a
//     TurnInfo: StartOfTurn for the first word of a turn, Update after it;
//     eot_timeout_ms (default 500 in the simulation) of silence after a word,
//     or CloseStream with words pending, sends EndOfTurn. audio_window_start
//     is where the previous turn ended. Configure is echoed as
//     ConfigureSuccess; CloseStream closes 1000.
//   - GET /v1/speak sends Metadata, buffers Speak text, and answers Flush
//     with the text synthesized into binary frames followed by Flushed;
//     Clear (or the older Reset) drops buffered text and abandons audio not
//     yet sent, then answers Cleared; Close closes 1000. Each Flush and
//     Clear takes the next sequence_id, from 0.
//   - GET /v1/agent/converse sends Welcome, answers Settings with
//     SettingsApplied (audio.input.sample_rate, default 16000, and
//     audio.output.sample_rate, default 24000, are honoured), and hears
//     audio like /v1/listen. 300 ms of silence after a word ends the user's
//     turn: UserStartedSpeaking (at the turn's first word), ConversationText
//     user, ConversationText assistant "you said: <transcript>",
//     AgentStartedSpeaking, the reply as binary audio, AgentAudioDone.
//     Unknown message types get a Warning.
//   - POST /v1/speak streams the synthesized text (linear16, WAV container
//     unless container=none; sample_rate default 24000) with dg-model-name,
//     dg-model-uuid and dg-char-count headers.
//   - POST /v1/listen answers from the decoded words; sha256 is the body's.
//     With callback= it answers {"request_id"} at once and delivers nothing.
//     A JSON {"url": ...} body cannot be fetched: it yields an empty
//     transcript of zero duration.
//   - POST /v1/read summarises the text as its first sentence (at most 20
//     words) with neutral sentiment; GET /v1/models lists sim-nova and
//     sim-aura; GET /v1/status reports the active counts.
//
// Synthesized speech lays each whitespace-separated word out 200 ms long
// (longer if its encoding needs it) after 50 ms of silence, and ends with
// 50 ms of silence, so it decodes back to the text's words.
//
// # Modes, capacity and timing
//
// An Engine's Mode decides how new requests are treated (ok, refuse, hang,
// die; see [Mode]); it can be changed at run time with SetMode or with
// POST /_sim/mode?mode=... (GET /_sim/mode reads it). Capacity counts
// inference requests in flight plus open streams; beyond it requests and
// upgrades get Options.FullStatus with Retry-After: 1 and a Deepgram error
// body. Latency delays every answer. Synthesized audio is written in chunks
// of Options.SpeakChunk bytes, paced by Options.SpeakInterval or, in tests,
// by Options.SpeakGate.
//
// Every goroutine has an owner and an end: Engine.Close makes every
// ServeHTTP call in progress return (hung requests are aborted, streams get
// close 1001, blocked body reads and writes are cut) and waits for them; a
// stream's audio writer ends before its stream; Server.Close closes the
// engine and then its HTTP server and waits for its Serve loop.
package sim
