// Package sim is a simulated Deepgram engine: it speaks the real Deepgram
// API (pre-recorded and streaming STT, Flux, text-to-speech, the voice agent,
// text intelligence, models and the self-hosted status endpoint) over real
// sockets, for local runs, tests, chaos and load tests. It is honest about
// being a simulation: its models are named sim-nova and sim-aura and every
// response and handshake carries "X-Sim-Engine: <region>".
//
// # Hearing words: the audio encoding
//
// Words are heard only in linear16 samples (signed 16-bit little-endian
// PCM; with several channels only channel 0 is heard). Instead of
// recognising speech the engine decodes words placed in the audio by
// [Synthesize]:
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
// A word still sounding when the audio ends ends there; one cut off inside
// its text is dropped. The decoder is a streaming state machine: audio may
// come in chunks of any size, odd byte counts included (a partial sample at
// the end is dropped).
//
// # Hearing any other audio: no speech
//
// Like Deepgram, the engine takes any audio and hears sound that is not a
// word as sound without speech: an empty transcript (transcript "",
// words []), never an error. How it reads the bytes:
//
//   - A leading RIFF/WAVE header is always detected and wins over the
//     query: its format, sample rate and channel count are used, and the
//     data chunk's size bounds the audio (a streaming WAV's 0 or 0xFFFFFFFF
//     size, or a truncated file, means the bytes present). PCM of 8, 16, 24
//     or 32 bits, IEEE float, A-law and mu-law are measured; other WAV
//     formats (ADPCM, MP3 in WAV, ...) are taken but not measured.
//   - With encoding=linear16, linear32, mulaw or alaw, the bytes are raw
//     samples at sample_rate (default 16000) and channels (default 1): the
//     duration is their byte rate's. Digital silence is silence; any other
//     sound is noise.
//   - With another encoding Deepgram accepts (flac, opus, ogg-opus, speex,
//     amr-nb, amr-wb, g729), or with no encoding and bytes that open an MP3
//     (frame or ID3 tag), AAC (ADTS), Ogg, FLAC, WebM/Matroska or MP4/M4A
//     container (detected from their magic bytes), the audio is taken but
//     cannot be measured: duration 0, no words, and metadata.warnings says
//     so ({"type": "unmeasured_audio", "message": ...}; "parameter":
//     "encoding" when the query said so).
//   - With no encoding and no container, Deepgram could not identify the
//     bytes; the engine makes one exception, its own encoding: linear16 at
//     sample_rate that follows it strictly. Any other sound there (a
//     non-zero run that does not open with the marker, a bad length or text
//     sample, a run that ends before its text) is [ErrUndecodable]: streams
//     close with 1008 "DATA-0000", pre-recorded answers 400 "Bad Request:
//     failed to process audio: corrupt or unsupported data". So are a
//     broken or truncated WAV header, an empty pre-recorded body, and a
//     pre-recorded body of raw audio with no whole sample in it (a partial
//     sample after whole ones is dropped, not refused).
//
// Words are still heard amid noise in linear16 audio; a noise run that
// happens to open with the marker but breaks the encoding is noise (a
// SpeechStarted has gone out for it, as a voice detector's false alarm).
// A stream's closing Metadata carries the same warnings as a pre-recorded
// answer.
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
//   - Sound without speech (noise, as above) is reported at every whole
//     second of audio, while no word is pending or sounding, in a window
//     that holds some: with endpointing on, once endpointing ms have passed
//     since the window's first sound, an empty final with speech_final
//     true; otherwise, with interim_results=true and sound in the last
//     second, an empty interim. (So a tone with the default endpointing
//     gets an empty final every second.) Digital silence alone is never
//     reported.
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
// No audio or text for Options.SilenceTimeout sends Metadata (its sha256
// "incomplete", as Deepgram's captures show) and closes 1011 with
// Deepgram's NET-0001 sentence, "Deepgram did not receive audio data or a
// text message within the timeout window. See https://dpgr.am/net0001";
// KeepAlive counts only once audio has been heard. Unknown text messages
// are ignored. (The engine has no server-side timeout, so it never closes
// with NET-0000.)
//
// # The other streams and endpoints
//
//   - GET /v2/listen (Flux) sends Connected, then per completed word a
//     TurnInfo: StartOfTurn for the first word of a turn, Update after it
//     (TurnResumed for the first word after an EagerEndOfTurn). With
//     eager_eot_threshold set, half of eot_timeout_ms of silence after a
//     word sends EagerEndOfTurn; eot_timeout_ms (default 500 in the
//     simulation) of silence after a word, or CloseStream with words
//     pending, sends EndOfTurn, and turn_index counts on. Every message
//     carries request_id and sequence_id (from 0, across all types);
//     TurnInfo carries event, turn_index, audio_window_start (where the
//     previous turn ended), audio_window_end, transcript, words and
//     end_of_turn_confidence. Sound without speech sends an empty Update at
//     every 0.25 s of audio it flows in, outside turns, and starts no turn.
//     Configure is echoed as ConfigureSuccess; CloseStream closes 1000; an
//     idle stream gets Error INACTIVE_CLIENT before the timeout close.
//   - GET /v1/speak sends Metadata, buffers Speak text, and answers Flush
//     with the text synthesized into binary frames followed by Flushed;
//     Clear (or the older Reset) drops buffered text and abandons audio not
//     yet sent, then answers Cleared; Close closes 1000. Each Flush and
//     Clear takes the next sequence_id, from 0.
//   - GET /v2/speak (Flux TTS) sends Connected; Speak adds text to the turn
//     (chunks are joined as sent, as LLM tokens are); Flush ends the turn:
//     SpeechStarted with its speech_id (dg_sp_ and 12 hex digits), the audio
//     as binary frames, Flushed, then SpeechMetadata (audio_duration_ms and
//     character counts); a Flush with no text gets Warning NO_ACTIVE_SPEECH.
//     Close waits for earlier turns, sends SessionMetadata (the totals) and
//     closes 1000. The simulation speaks a turn when it is flushed, where
//     Flux TTS starts as text arrives. POST /v2/speak is POST /v1/speak.
//   - GET /v1/agent/converse sends Welcome, answers Settings with
//     SettingsApplied (audio.input.sample_rate, default 16000, and
//     audio.output.sample_rate, default 24000, are honoured), and hears
//     linear16 audio like /v1/listen (noise is no speech). 300 ms of
//     silence after a word ends the user's turn: UserStartedSpeaking (at the turn's first word), ConversationText
//     user, ConversationText assistant "you said: <transcript>",
//     AgentStartedSpeaking, the reply as binary audio, AgentAudioDone.
//     Unknown message types get a Warning.
//   - POST /v1/speak streams the synthesized text (linear16, WAV container
//     unless container=none; sample_rate default 24000) with dg-model-name,
//     dg-model-uuid and dg-char-count headers.
//   - POST /v1/listen answers from the decoded words; sha256 is the body's.
//     With callback= it answers {"request_id"} at once and delivers nothing.
//     A JSON {"url": ...} body cannot be fetched (the engine has no
//     network): it gets 400 with err_code REMOTE_CONTENT_ERROR, as Deepgram
//     answers a URL it cannot fetch.
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
