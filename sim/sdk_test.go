package sim_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"

	listenapi "github.com/deepgram/deepgram-go-sdk/v3/pkg/api/listen/v1/rest"
	manageapi "github.com/deepgram/deepgram-go-sdk/v3/pkg/api/manage/v1"
	speakapi "github.com/deepgram/deepgram-go-sdk/v3/pkg/api/speak/v1/rest"
	interfaces "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/interfaces"
	interfacesv1 "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/interfaces/v1"
	listen "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/listen"
	manage "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/manage"
	speak "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/speak"

	"github.com/earshot/earshot/sim"
)

// The official Go SDK must parse what the simulation answers.
func TestOfficialSDK(t *testing.T) {
	s := start(t, sim.Options{SpeakInterval: -1})
	ctx := context.Background()
	opts := func() *interfaces.ClientOptions { return &interfaces.ClientOptions{Host: s.URL()} }

	t.Run("prerecorded", func(t *testing.T) {
		dg := listenapi.New(listen.NewREST("sim-key", opts()))
		audio := sim.Synthesize(helloWorld(), 16000, helloWorldTotal)
		res, err := dg.FromStream(ctx, bytes.NewReader(audio), &interfaces.PreRecordedTranscriptionOptions{
			Model: "nova-3", Encoding: "linear16", SampleRate: 16000, Punctuate: true})
		if err != nil {
			t.Fatalf("FromStream: %v", err)
		}
		if res.Metadata == nil || res.Results == nil || len(res.Results.Channels) != 1 {
			t.Fatalf("response %+v", res)
		}
		alt := res.Results.Channels[0].Alternatives[0]
		var words []sim.Word
		for _, w := range alt.Words {
			words = append(words, sim.Word{Text: w.Word, Start: w.Start, End: w.End})
		}
		if alt.Transcript != "hello world" || !reflect.DeepEqual(words, helloWorld()) {
			t.Errorf("transcript %q, words %v", alt.Transcript, words)
		}
		m := res.Metadata
		if m.Duration != helloWorldTotal || m.Channels != 1 || m.RequestID == "" || m.Sha256 == "" ||
			len(m.Models) != 1 || m.ModelInfo[m.Models[0]].Name != "sim-nova" {
			t.Errorf("metadata %+v", m)
		}

		// Errors parse as Deepgram errors.
		_, err = dg.FromStream(ctx, bytes.NewReader(samples(0, 77, 0)), &interfaces.PreRecordedTranscriptionOptions{})
		var se *interfacesv1.StatusError
		if !errors.As(err, &se) || se.DeepgramError == nil || se.DeepgramError.ErrCode != "Bad Request" {
			t.Errorf("undecodable audio: %v", err)
		}
	})

	t.Run("speak", func(t *testing.T) {
		dg := speakapi.New(speak.NewREST("sim-key", opts()))
		var buf interfaces.RawResponse
		res, err := dg.ToStream(ctx, "hello from the sim", &interfaces.SpeakOptions{Model: "aura-2-thalia-en", Encoding: "linear16", SampleRate: 16000}, &buf)
		if err != nil {
			t.Fatalf("ToStream: %v", err)
		}
		if res.Characters != len("hello from the sim") || res.ModelName != "sim-aura" || res.RequestID == "" {
			t.Errorf("response %+v", res)
		}
		words, err := sim.Decode(buf.Bytes(), 0)
		if err != nil || len(words) != 4 || words[3].Text != "sim" {
			t.Errorf("audio decodes to %v, %v", words, err)
		}
	})

	t.Run("models", func(t *testing.T) {
		res, err := manageapi.New(manage.New("sim-key", opts())).ListModels(ctx, nil)
		if err != nil {
			t.Fatalf("ListModels: %v", err)
		}
		if len(res.Stt) != 1 || res.Stt[0].Name != "sim-nova" || !res.Stt[0].Streaming || len(res.Tts) != 1 {
			t.Errorf("models %+v", res)
		}
	})
}
