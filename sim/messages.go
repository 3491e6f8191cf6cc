package sim

import (
	"crypto/rand"
	"fmt"
	"time"
)

// Model identity. The engine is honest about being a simulation: its models
// are called sim-*, and every response carries the X-Sim-Engine header.
const (
	sttModelName = "sim-nova"
	sttModelUUID = "5157e5a1-0000-4000-8000-000000000001"
	ttsModelName = "sim-aura"
	ttsModelUUID = "5157e5a1-0000-4000-8000-000000000002"
	modelVersion = "sim"
	modelArch    = "sim"
	confidence   = 0.99

	// HeaderEngine names the simulated region on every response and handshake.
	HeaderEngine = "X-Sim-Engine"
	// HeaderRequestID carries the request id, as Deepgram sends it.
	HeaderRequestID = "dg-request-id"
)

// newRequestID returns a random UUID (version 4).
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// created formats a timestamp as Deepgram does (RFC 3339, milliseconds, UTC).
func created(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// apiError is Deepgram's classic error body, which the SDKs parse.
type apiError struct {
	ErrCode   string `json:"err_code"`
	ErrMsg    string `json:"err_msg"`
	RequestID string `json:"request_id"`
}

type modelInfo struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
}

func sttModelInfo() modelInfo {
	return modelInfo{Name: sttModelName, Version: modelVersion, Arch: modelArch}
}

type wordJSON struct {
	Word           string  `json:"word"`
	Start          float64 `json:"start"`
	End            float64 `json:"end"`
	Confidence     float64 `json:"confidence"`
	PunctuatedWord string  `json:"punctuated_word"`
}

type alternative struct {
	Transcript string     `json:"transcript"`
	Confidence float64    `json:"confidence"`
	Words      []wordJSON `json:"words"`
}

// alternativeOf renders words as the single alternative of a channel.
func alternativeOf(words []decodedWord, sampleRate int) alternative {
	alt := alternative{Words: make([]wordJSON, 0, len(words))}
	for i, w := range words {
		if i > 0 {
			alt.Transcript += " "
		}
		alt.Transcript += w.text
		p := w.public(sampleRate)
		alt.Words = append(alt.Words, wordJSON{Word: w.text, Start: p.Start, End: p.End, Confidence: confidence, PunctuatedWord: w.text})
	}
	if len(words) > 0 {
		alt.Confidence = confidence
	}
	return alt
}

// Pre-recorded /v1/listen.

type listenMetadata struct {
	TransactionKey string               `json:"transaction_key"`
	RequestID      string               `json:"request_id"`
	Sha256         string               `json:"sha256"`
	Created        string               `json:"created"`
	Duration       float64              `json:"duration"`
	Channels       int                  `json:"channels"`
	Models         []string             `json:"models"`
	ModelInfo      map[string]modelInfo `json:"model_info"`
	Warnings       []apiWarning         `json:"warnings,omitempty"`
	Extra          map[string]string    `json:"extra,omitempty"`
}

// apiWarning is one of metadata.warnings, in the shape the SDKs parse.
type apiWarning struct {
	Parameter string `json:"parameter,omitempty"`
	Type      string `json:"type"`
	Message   string `json:"message"`
}

type listenChannel struct {
	Alternatives []alternative `json:"alternatives"`
}

type listenResponse struct {
	Metadata listenMetadata `json:"metadata"`
	Results  struct {
		Channels []listenChannel `json:"channels"`
	} `json:"results"`
}

type callbackResponse struct {
	RequestID string `json:"request_id"`
}

// Streaming /v1/listen.

type resultsMetadata struct {
	RequestID string            `json:"request_id"`
	ModelInfo modelInfo         `json:"model_info"`
	ModelUUID string            `json:"model_uuid"`
	Extra     map[string]string `json:"extra,omitempty"`
}

type resultsMessage struct {
	Type         string          `json:"type"`
	ChannelIndex []int           `json:"channel_index"`
	Duration     float64         `json:"duration"`
	Start        float64         `json:"start"`
	IsFinal      bool            `json:"is_final"`
	SpeechFinal  bool            `json:"speech_final"`
	FromFinalize bool            `json:"from_finalize"`
	Channel      listenChannel   `json:"channel"`
	Metadata     resultsMetadata `json:"metadata"`
}

// streamMetadata is the Metadata message that ends a stream: the pre-recorded
// metadata with a type.
type streamMetadata struct {
	Type string `json:"type"`
	listenMetadata
}

type utteranceEndMessage struct {
	Type        string  `json:"type"`
	Channel     []int   `json:"channel"`
	LastWordEnd float64 `json:"last_word_end"`
}

type speechStartedMessage struct {
	Type      string  `json:"type"`
	Channel   []int   `json:"channel"`
	Timestamp float64 `json:"timestamp"`
}

// Flux /v2/listen.

type fluxWord struct {
	Word       string  `json:"word"`
	Confidence float64 `json:"confidence"`
}

type turnInfo struct {
	Type                string     `json:"type"`
	RequestID           string     `json:"request_id"`
	SequenceID          int        `json:"sequence_id"`
	Event               string     `json:"event"`
	TurnIndex           int        `json:"turn_index"`
	AudioWindowStart    float64    `json:"audio_window_start"`
	AudioWindowEnd      float64    `json:"audio_window_end"`
	Transcript          string     `json:"transcript"`
	Words               []fluxWord `json:"words"`
	EndOfTurnConfidence float64    `json:"end_of_turn_confidence"`
}

// Text-to-speech and the agent.

type typed struct {
	Type string `json:"type"`
}

type speakMetadata struct {
	Type         string `json:"type"`
	RequestID    string `json:"request_id"`
	ModelName    string `json:"model_name"`
	ModelVersion string `json:"model_version"`
	ModelUUID    string `json:"model_uuid"`
}

// Flux TTS, /v2/speak.

type speakV2Connected struct {
	Type         string   `json:"type"`
	RequestID    string   `json:"request_id"`
	ModelName    string   `json:"model_name"`
	ModelVersion string   `json:"model_version"`
	ModelUUIDs   []string `json:"model_uuids"`
}

// speakV2Speech is SpeechStarted and Flushed: a turn's event.
type speakV2Speech struct {
	Type     string `json:"type"`
	SpeechID string `json:"speech_id"`
}

type speakV2SpeechMetadata struct {
	Type            string `json:"type"`
	SpeechID        string `json:"speech_id"`
	AudioDurationMS int    `json:"audio_duration_ms"`
	InputChars      int    `json:"input_character_count"`
	BillableChars   int    `json:"billable_character_count"`
	ControlsApplied struct {
		PronunciationsApplied int `json:"pronunciations_applied"`
		PronunciationWarnings int `json:"pronunciation_warnings"`
	} `json:"controls_applied"`
}

type speakV2Session struct {
	Type          string `json:"type"`
	TotalAudioMS  int    `json:"total_audio_duration_ms"`
	TotalChars    int    `json:"total_input_character_count"`
	TotalBillable int    `json:"total_billable_character_count"`
}

type sequenced struct {
	Type       string `json:"type"`
	SequenceID int    `json:"sequence_id"`
}

type warning struct {
	Type        string `json:"type"`
	Description string `json:"description"`
	Code        string `json:"code"`
}

type conversationText struct {
	Type    string `json:"type"`
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Status and models.

type statusResponse struct {
	SystemHealth                 string `json:"system_health"`
	ActiveBatchRequests          int    `json:"active_batch_requests"`
	ActiveStreamRequests         int    `json:"active_stream_requests"`
	ActiveListenV2StreamRequests int    `json:"active_listen_v2_stream_requests"`
}

type sttModel struct {
	Name            string   `json:"name"`
	CanonicalName   string   `json:"canonical_name"`
	Architecture    string   `json:"architecture"`
	Languages       []string `json:"languages"`
	Version         string   `json:"version"`
	UUID            string   `json:"uuid"`
	Batch           bool     `json:"batch"`
	Streaming       bool     `json:"streaming"`
	FormattedOutput bool     `json:"formatted_output"`
}

type ttsModel struct {
	Name          string   `json:"name"`
	CanonicalName string   `json:"canonical_name"`
	Architecture  string   `json:"architecture"`
	Languages     []string `json:"languages"`
	Version       string   `json:"version"`
	UUID          string   `json:"uuid"`
	Metadata      struct {
		Accent string   `json:"accent"`
		Tags   []string `json:"tags"`
	} `json:"metadata"`
}

type modelsResponse struct {
	STT []sttModel `json:"stt"`
	TTS []ttsModel `json:"tts"`
}

func models() modelsResponse {
	tts := ttsModel{Name: ttsModelName, CanonicalName: ttsModelName, Architecture: modelArch,
		Languages: []string{"en"}, Version: modelVersion, UUID: ttsModelUUID}
	tts.Metadata.Accent = "simulated"
	tts.Metadata.Tags = []string{"simulated"}
	return modelsResponse{
		STT: []sttModel{{Name: sttModelName, CanonicalName: sttModelName, Architecture: modelArch,
			Languages: []string{"en"}, Version: modelVersion, UUID: sttModelUUID, Batch: true, Streaming: true}},
		TTS: []ttsModel{tts},
	}
}

// Read (/v1/read).

type readResponse struct {
	Metadata struct {
		RequestID   string `json:"request_id"`
		Created     string `json:"created"`
		Language    string `json:"language"`
		SummaryInfo struct {
			ModelUUID    string `json:"model_uuid"`
			InputTokens  int    `json:"input_tokens"`
			OutputTokens int    `json:"output_tokens"`
		} `json:"summary_info"`
	} `json:"metadata"`
	Results struct {
		Summary struct {
			Text string `json:"text"`
		} `json:"summary"`
		Sentiments struct {
			Segments []readSegment `json:"segments"`
			Average  struct {
				Sentiment      string  `json:"sentiment"`
				SentimentScore float64 `json:"sentiment_score"`
			} `json:"average"`
		} `json:"sentiments"`
	} `json:"results"`
}

type readSegment struct {
	Text           string  `json:"text"`
	StartWord      int     `json:"start_word"`
	EndWord        int     `json:"end_word"`
	Sentiment      string  `json:"sentiment"`
	SentimentScore float64 `json:"sentiment_score"`
}
