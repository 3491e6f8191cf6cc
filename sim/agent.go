package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// agentEndpointMS is the silence after a word that ends the user's turn.
const agentEndpointMS = 300

// serveAgent is the voice agent: GET /v1/agent/converse. It greets with
// Welcome, answers Settings with SettingsApplied, and hears audio with the
// word decoder (at Settings' audio.input.sample_rate, default 16000, fixed
// by the first audio frame). The user's turn ends after 300 ms of silence
// following a word; the agent then sends ConversationText (user), its reply
// "you said: <transcript>" as ConversationText (assistant),
// AgentStartedSpeaking, the reply as synthesized binary audio (at
// audio.output.sample_rate, default 24000) and AgentAudioDone.
// UserStartedSpeaking marks the first word of a turn. InjectUserMessage and
// InjectAgentMessage act as a heard turn and a spoken reply; UpdatePrompt
// and UpdateSpeak are acknowledged; unknown types get a Warning.
func (e *Engine) serveAgent(rq *request) {
	s := e.upgrade(rq)
	if s == nil {
		return
	}
	defer s.end()
	if err := s.sendJSON(map[string]string{"type": "Welcome", "request_id": s.id}); err != nil {
		return
	}
	sp := newSpeaker(s)
	defer sp.stop()

	inRate, outRate := defaultListenRate, defaultSpeakRate
	send := func(v any) bool {
		return sp.do(func(context.Context) error { return s.sendJSON(v) })
	}
	speak := func(text string) bool {
		return sp.do(func(ctx context.Context) error {
			if err := s.sendJSON(map[string]any{"type": "AgentStartedSpeaking", "total_latency": 0, "tts_latency": 0, "ttt_latency": 0}); err != nil {
				return err
			}
			if err := sp.say(ctx, text, outRate); err != nil || ctx.Err() != nil {
				return err
			}
			return s.sendJSON(typed{Type: "AgentAudioDone"})
		})
	}
	userTurn := func(content string) bool {
		reply := "you said: " + content
		return send(conversationText{Type: "ConversationText", Role: "user", Content: content}) &&
			send(conversationText{Type: "ConversationText", Role: "assistant", Content: reply}) &&
			speak(reply)
	}

	var tr *transcriber
	startTranscriber := func() {
		// The agent's input has a declared encoding (linear16): sound that
		// is not a word is heard as no speech, never an error.
		in := audioInput{encoding: "linear16", sampleRate: inRate, channels: 1}
		tr = newTranscriber(transcriberConfig{input: in, endpointMS: agentEndpointMS}, transcriptHooks{
			speechStarted: func(int64) error {
				if len(tr.pending) == 0 {
					send(typed{Type: "UserStartedSpeaking"})
				}
				return nil
			},
			final: func(_ window, words []decodedWord, _ finalCause) error {
				if len(words) > 0 {
					userTurn(alternativeOf(words, tr.sampleRate()).Transcript)
				}
				return nil
			},
		})
	}

	s.readLoop(readOptions{silence: e.opts.SilenceTimeout, keepAliveAlways: true},
		func(audio []byte) bool {
			if tr == nil {
				startTranscriber()
			}
			if err := tr.Feed(audio); err != nil {
				s.undecodable(err)
				return false
			}
			return true
		},
		func(typ string, raw []byte) bool {
			switch typ {
			case "Settings":
				var m agentSettings
				if err := json.Unmarshal(raw, &m); err != nil {
					return send(agentError("INVALID_SETTINGS", err.Error()))
				}
				in, out := m.Audio.Input, m.Audio.Output
				if err := checkSpeakEncoding(in.Encoding); err != nil {
					return send(agentError("UNSUPPORTED_ENCODING", err.Error()))
				}
				if err := checkSpeakEncoding(out.Encoding); err != nil {
					return send(agentError("UNSUPPORTED_ENCODING", err.Error()))
				}
				if in.SampleRate > 0 && tr == nil {
					inRate = in.SampleRate
				}
				if out.SampleRate > 0 {
					outRate = out.SampleRate
				}
				return send(typed{Type: "SettingsApplied"})
			case "KeepAlive", "FunctionCallResponse":
				return true
			case "UpdatePrompt":
				return send(typed{Type: "PromptUpdated"})
			case "UpdateSpeak":
				return send(typed{Type: "SpeakUpdated"})
			case "InjectUserMessage":
				var m struct {
					Content string `json:"content"`
				}
				_ = json.Unmarshal(raw, &m)
				return userTurn(m.Content)
			case "InjectAgentMessage":
				var m struct {
					Content string `json:"content"`
					Message string `json:"message"`
				}
				_ = json.Unmarshal(raw, &m)
				text := strings.TrimSpace(m.Message + " " + m.Content)
				return send(conversationText{Type: "ConversationText", Role: "assistant", Content: text}) && speak(text)
			}
			return send(warning{Type: "Warning", Code: "UNKNOWN_MESSAGE_TYPE", Description: fmt.Sprintf("unknown message type %q", typ)})
		})
}

type agentSettings struct {
	Audio struct {
		Input struct {
			Encoding   string `json:"encoding"`
			SampleRate int    `json:"sample_rate"`
		} `json:"input"`
		Output struct {
			Encoding   string `json:"encoding"`
			SampleRate int    `json:"sample_rate"`
		} `json:"output"`
	} `json:"audio"`
}

func agentError(code, desc string) map[string]string {
	return map[string]string{"type": "Error", "code": code, "description": desc}
}
