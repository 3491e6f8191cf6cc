package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// What it takes to move an open /v1/listen stream to another region without
// losing or repeating a word (see stream.resume):
//
//   - the audio the region has not yet covered with a final result: a log
//     of the client's audio, trimmed at the end of the last final;
//   - offsets in audio time, from bytes delivered and the encoding's byte
//     rate, never the wall clock: the new region hears the log from the
//     last final's end, so its time 0 is that point of the stream;
//   - a rewrite of what the new region sends: every timestamp shifted by
//     that offset, SpeechStarted and UtteranceEnd the client already has
//     dropped, and Metadata's duration made the whole stream's;
//   - the control state to re-send: a Finalize not yet answered, a
//     CloseStream not yet answered with Metadata.

// audioFormat is raw audio's layout, from the stream's query.
type audioFormat struct {
	rate     int // samples per second
	channels int
	width    int // bytes per sample
}

func (f audioFormat) frame() int64 { return int64(f.channels * f.width) }

// bytesAt is the byte offset of time t (seconds), on a frame boundary.
func (f audioFormat) bytesAt(t float64) int64 {
	return int64(math.Round(t*float64(f.rate))) * f.frame()
}

// seconds is the time at byte offset n.
func (f audioFormat) seconds(n int64) float64 { return float64(n/f.frame()) / float64(f.rate) }

// rawFormat reads the audio format of a /v1/listen query. Only raw
// encodings can be resumed at any point: a container (WAV, Ogg, WebM, MP3)
// carries its header only at the start.
func rawFormat(rawQuery string) (audioFormat, bool) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return audioFormat{}, false
	}
	f := audioFormat{channels: 1}
	switch strings.ToLower(q.Get("encoding")) {
	case "linear16":
		f.width = 2
	case "linear32":
		f.width = 4
	case "mulaw", "alaw":
		f.width = 1
	default:
		return audioFormat{}, false
	}
	if f.rate, err = strconv.Atoi(q.Get("sample_rate")); err != nil || f.rate <= 0 || f.rate > 384000 {
		return audioFormat{}, false
	}
	if c := q.Get("channels"); c != "" {
		if f.channels, err = strconv.Atoi(c); err != nil || f.channels < 1 || f.channels > 64 {
			return audioFormat{}, false
		}
	}
	return f, true
}

// utteranceEnd is the stream's UtteranceEnd silence, in seconds; 0 when the
// stream gets none (it needs interim_results).
func utteranceEnd(rawQuery string) float64 {
	q, err := url.ParseQuery(rawQuery)
	if err != nil || q.Get("interim_results") != "true" {
		return 0
	}
	ms, err := strconv.Atoi(q.Get("utterance_end_ms"))
	if err != nil || ms <= 0 {
		return 0
	}
	return float64(ms) / 1000
}

// hasEncoding reports whether a query names its audio's encoding.
func hasEncoding(rawQuery string) bool {
	q, err := url.ParseQuery(rawQuery)
	return err == nil && q.Get("encoding") != ""
}

// wavHeader reads a PCM WAV header at the start of b: the audio's format
// and the header's length (up to the data chunk's first byte). Only linear
// PCM of 16 or 32 bits, and mu-law and A-law, can be resumed.
func wavHeader(b []byte) (audioFormat, int, bool) {
	le := func(p []byte) uint32 { return uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24 }
	if len(b) < 12 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return audioFormat{}, 0, false
	}
	var f audioFormat
	for off := 12; off+8 <= len(b); {
		id, size := string(b[off:off+4]), int(le(b[off+4:off+8]))
		body := off + 8
		switch id {
		case "fmt ":
			if size < 16 || body+16 > len(b) {
				return audioFormat{}, 0, false
			}
			tag := int(b[body]) | int(b[body+1])<<8
			f.channels = int(b[body+2]) | int(b[body+3])<<8
			f.rate = int(le(b[body+4 : body+8]))
			bits := int(b[body+14]) | int(b[body+15])<<8
			switch {
			case (tag == 1 || tag == 0xFFFE) && (bits == 16 || bits == 32):
				f.width = bits / 8
			case (tag == 6 || tag == 7) && bits == 8:
				f.width = 1
			default:
				return audioFormat{}, 0, false
			}
		case "data":
			if f.rate <= 0 || f.channels < 1 || f.width == 0 {
				return audioFormat{}, 0, false
			}
			return f, body, true
		}
		if size < 0 || size > len(b) {
			return audioFormat{}, 0, false // a chunk past this message: not a header we can keep
		}
		off = body + size + size%2
	}
	return audioFormat{}, 0, false
}

// notMovable is the protocol of a container stream whose first audio was
// not a WAV header it can resume: everything passes as it is.
type notMovable struct{}

func (notMovable) client(string, []byte, int64) {}
func (notMovable) shift(_ string, msg []byte, out [][]byte) [][]byte {
	return append(out, msg)
}
func (notMovable) watermark() int64                   { return 0 }
func (notMovable) resumed(int64) ([][]byte, []queued) { return nil, nil }
func (notMovable) finished(bool) bool                 { return true }
func (notMovable) audio() audioFormat                 { return audioFormat{rate: 1, channels: 1, width: 1} }

// resumeLog keeps the client's audio from the end of the last final on.
// Its array is reused: trimming moves the start forward, and an append
// that would not fit first moves what is held back to the front, so a
// stream in steady state (a final every second or so) allocates nothing.
type resumeLog struct {
	arr   []byte // buf is arr[off:]
	off   int
	buf   []byte
	start int64 // stream offset of buf[0]
	limit int   // most bytes held; past it the stream cannot be resumed
	over  bool
}

// end is the stream offset just past the audio delivered so far.
func (l *resumeLog) end() int64 { return l.start + int64(len(l.buf)) }

func (l *resumeLog) append(p []byte) {
	if l.over {
		l.start += int64(len(p))
		return
	}
	n := len(l.buf) + len(p)
	if n > l.limit {
		// Too much audio without a final: give up on resuming this
		// stream rather than hold more.
		l.over = true
		l.start += int64(n)
		l.arr, l.buf, l.off = nil, nil, 0
		return
	}
	if l.off+n > cap(l.arr) {
		if n <= cap(l.arr) && l.off > 0 {
			copy(l.arr[:cap(l.arr)], l.buf) // back to the front
		} else {
			na := make([]byte, len(l.buf), min(l.limit, max(2*n, 16<<10)))
			copy(na, l.buf)
			l.arr = na
		}
		l.off = 0
		l.arr = l.arr[:len(l.buf)]
	}
	l.arr = append(l.arr[:l.off+len(l.buf)], p...)
	l.buf = l.arr[l.off:]
}

// trim drops the audio before stream offset to.
func (l *resumeLog) trim(to int64) {
	if to <= l.start {
		return
	}
	n := int(min(to-l.start, int64(len(l.buf))))
	l.buf = l.buf[n:]
	l.off += n
	l.start += int64(n)
}

// protocol is what a resumable stream's path knows of its messages, for
// moving it: the stream itself keeps the log and does the replay.
type protocol interface {
	// client notes a client's text message of type typ as it goes to the
	// region, sent after the audio up to stream offset at.
	client(typ string, msg []byte, at int64)
	// shift passes a region's message on in the client's time: the
	// messages to send in its place, in order (none to drop it).
	shift(typ string, msg []byte, out [][]byte) [][]byte
	// watermark is the stream offset up to which results are final.
	watermark() int64
	// resumed prepares for a leg that hears the log from start; it returns
	// what to send that leg first, and what to replay at places in the
	// audio (noted again through client as they are sent).
	resumed(start int64) (first [][]byte, at []queued)
	// finished reports whether, after the client's CloseStream, the region
	// has answered all it will, a loss then being the end, not a move;
	// pending says whether audio not yet covered by a final remains.
	finished(pending bool) bool
	audio() audioFormat
}

var (
	_ protocol = (*listenTrack)(nil)
	_ protocol = (*fluxTrack)(nil)
)

// A snapshotter can save and restore its state, so that a replay that
// fails part-way can be tried again on the next region.
type snapshotter interface {
	snapshot() any
	restore(any)
}

func (t *listenTrack) snapshot() any {
	c := *t
	c.finalizes = slices.Clone(t.finalizes)
	c.finalEnd = maps.Clone(t.finalEnd)
	return c
}

func (t *listenTrack) restore(v any) { *t = v.(listenTrack) }

func (t *fluxTrack) snapshot() any { return *t }

func (t *fluxTrack) restore(v any) { *t = v.(fluxTrack) }

// listenTrack is what the relay learns of a /v1/listen stream as messages
// pass, for resuming it: stream offsets in bytes, times in seconds of the
// client's time.
type listenTrack struct {
	format      audioFormat
	utterance   float64 // utterance_end_ms, in seconds; 0: no UtteranceEnd
	replayed    bool    // the current leg heard a replay: rewrite what it sends
	offset      float64 // the current leg's time 0 in the client's time
	finalEnd    map[int]float64
	finalizes   []int64 // stream offsets of Finalizes not answered yet
	metaSeen    bool    // the region answered CloseStream with Metadata
	lastSpeech  float64 // the last SpeechStarted passed on
	lastUtter   float64 // the last UtteranceEnd passed on
	lastWordEnd float64 // the end of the last word in a final passed on
	lastChannel []int
	channels    int  // channels results come for (channel_index[1])
	utterOwed   bool // an UtteranceEnd the lost region would have sent
}

// finalResult is what the relay reads of a final.
type finalResult struct {
	IsFinal      bool    `json:"is_final"`
	FromFinalize bool    `json:"from_finalize"`
	Start        float64 `json:"start"`
	Duration     float64 `json:"duration"`
	ChannelIndex []int   `json:"channel_index"`
	Channel      struct {
		Alternatives []struct {
			Words []struct {
				Start float64 `json:"start"`
				End   float64 `json:"end"`
			} `json:"words"`
		} `json:"alternatives"`
	} `json:"channel"`
}

// watermark is the stream offset up to which every channel has its finals.
func (t *listenTrack) watermark() int64 {
	if len(t.finalEnd) == 0 || len(t.finalEnd) < t.channels {
		return 0 // a channel has no final yet: none of its audio is covered
	}
	w := math.Inf(1)
	for _, e := range t.finalEnd {
		w = math.Min(w, e)
	}
	return t.format.bytesAt(w)
}

// resumed prepares for a leg that hears the log from stream offset start:
// each Finalize not answered yet is replayed where it was sent.
func (t *listenTrack) resumed(start int64) ([][]byte, []queued) {
	t.replayed = true
	t.offset = t.format.seconds(start)
	t.metaSeen = false
	// An UtteranceEnd for a word before the replay cannot come from the new
	// region, which never hears that word: it is owed, and sent when the
	// new region's messages show the silence after it was long enough.
	t.utterOwed = t.utterance > 0 && t.lastWordEnd > t.lastUtter
	var at []queued
	for _, f := range t.finalizes {
		if f >= start { // else a later final covered its audio
			at = append(at, queued{at: f, msg: []byte(`{"type":"Finalize"}`)})
		}
	}
	t.finalizes = t.finalizes[:0]
	return nil, at
}

func (t *listenTrack) client(typ string, _ []byte, at int64) {
	if typ == "Finalize" {
		t.finalizes = append(t.finalizes, at)
	}
}

func (t *listenTrack) finished(bool) bool { return t.metaSeen }
func (t *listenTrack) audio() audioFormat { return t.format }

// shift passes a message from the current leg on in the client's time. It
// returns the messages to send in its place, in order (none for one the
// client already has: a SpeechStarted or UtteranceEnd replayed). It also
// tracks finals, for the watermark, and Metadata.
func (t *listenTrack) shift(typ string, msg []byte, out [][]byte) [][]byte {
	switch typ {
	case "Results", "UtteranceEnd", "SpeechStarted", "Metadata":
	default:
		return append(out, msg)
	}
	if !t.replayed {
		// The first leg: nothing to rewrite; only finals are read.
		switch typ {
		case "Results":
			t.observeFinal(msg)
		case "Metadata":
			t.metaSeen = true
		case "SpeechStarted":
			t.lastSpeech = numberAt(msg, "timestamp")
		case "UtteranceEnd":
			t.lastUtter = numberAt(msg, "last_word_end")
		}
		return append(out, msg)
	}
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(msg))
	d.UseNumber()
	if d.Decode(&m) != nil {
		return append(out, msg) // not ours to judge: pass it on
	}
	// When the new region shows audio past the owed UtteranceEnd's moment,
	// with no word before it, the UtteranceEnd goes first (or right after a
	// final that ends exactly then, as an engine orders them).
	owedBefore, owedAfter := false, false
	due := t.timeAt(t.lastWordEnd + t.utterance)
	switch typ {
	case "Results":
		first := t.shiftResults(m)
		end := t.timeAt(t.number(m, "start") + t.number(m, "duration"))
		if t.utterOwed {
			switch {
			case first >= 0 && first < due:
				t.utterOwed = false // speech came back first: none is owed
			case first >= 0 || end > due:
				owedBefore = true
			case end == due && m["is_final"] == true:
				owedAfter = true
			}
		}
	case "UtteranceEnd":
		v := t.shiftField(m, "last_word_end")
		if v <= t.lastUtter {
			return out
		}
		t.lastUtter = v
		t.utterOwed = false
	case "SpeechStarted":
		v := t.shiftField(m, "timestamp")
		if t.utterOwed && v >= due {
			owedBefore = true // (voice before then, with no word, does not cancel it)
		}
		if v <= t.lastSpeech {
			return t.owed(out, owedBefore)
		}
		t.lastSpeech = v
	case "Metadata":
		if v := t.shiftField(m, "duration"); t.utterOwed && v >= due {
			owedBefore = true
		}
		t.metaSeen = true
	}
	b, err := json.Marshal(m)
	if err != nil {
		b = msg
	}
	out = t.owed(out, owedBefore)
	out = append(out, b)
	if typ == "Results" {
		t.observeFinal(b)
	}
	return t.owed(out, owedAfter)
}

// owed appends the owed UtteranceEnd when now is set.
func (t *listenTrack) owed(out [][]byte, now bool) [][]byte {
	if !now || !t.utterOwed {
		return out
	}
	t.utterOwed = false
	t.lastUtter = t.lastWordEnd
	ch := t.lastChannel
	if ch == nil {
		ch = []int{0, t.format.channels}
	}
	b, _ := json.Marshal(struct {
		Type        string  `json:"type"`
		Channel     []int   `json:"channel"`
		LastWordEnd float64 `json:"last_word_end"`
	}{"UtteranceEnd", ch, t.lastWordEnd})
	return append(out, b)
}

// shiftResults shifts a Results message's times and returns its first
// word's start, or -1 without words.
func (t *listenTrack) shiftResults(m map[string]any) float64 {
	t.shiftField(m, "start")
	first := -1.0
	ch, _ := m["channel"].(map[string]any)
	alts, _ := ch["alternatives"].([]any)
	for ai, a := range alts {
		am, _ := a.(map[string]any)
		words, _ := am["words"].([]any)
		for wi, w := range words {
			if wm, ok := w.(map[string]any); ok {
				s := t.shiftField(wm, "start")
				t.shiftField(wm, "end")
				if ai == 0 && wi == 0 {
					first = s
				}
			}
		}
	}
	return first
}

// number reads m[k] as a number (after shifting); 0 if absent.
func (t *listenTrack) number(m map[string]any, k string) float64 {
	n, _ := m[k].(json.Number)
	v, _ := n.Float64()
	return v
}

// observeFinal notes where a final (in the client's time) ends, and its
// last word.
func (t *listenTrack) observeFinal(msg []byte) {
	if !bytes.Contains(msg, []byte(`"is_final":true`)) && !bytes.Contains(msg, []byte(`"is_final": true`)) {
		return
	}
	var r finalResult
	if json.Unmarshal(msg, &r) != nil || !r.IsFinal {
		return
	}
	ch := 0
	if len(r.ChannelIndex) > 0 {
		ch = r.ChannelIndex[0]
		t.lastChannel = r.ChannelIndex
		if len(r.ChannelIndex) > 1 {
			t.channels = r.ChannelIndex[1] // results come for this many channels
		}
	}
	if t.finalEnd == nil {
		t.finalEnd = make(map[int]float64, 1)
	}
	t.finalEnd[ch] = t.timeAt(r.Start + r.Duration)
	if alts := r.Channel.Alternatives; len(alts) > 0 && len(alts[0].Words) > 0 {
		t.lastWordEnd = alts[0].Words[len(alts[0].Words)-1].End
	}
	if r.FromFinalize && ch == 0 && len(t.finalizes) > 0 { // once per set of channels
		t.finalizes = t.finalizes[1:]
	}
}

// timeAt snaps a time to the audio's sample grid when it lies on it, so
// that sums of shifted times stay exact.
func (t *listenTrack) timeAt(v float64) float64 {
	rate := float64(t.format.rate)
	if s := math.Round(v * rate); math.Abs(v*rate-s) < 1e-6 {
		return s / rate
	}
	return v
}

// shiftField adds the leg's offset to m[k], a number, and returns the
// result. Times on the sample grid are shifted in samples, so that they
// are exactly what the engine would have said without the move.
func (t *listenTrack) shiftField(m map[string]any, k string) float64 {
	n, ok := m[k].(json.Number)
	if !ok {
		return 0
	}
	v, err := n.Float64()
	if err != nil {
		return 0
	}
	rate := float64(t.format.rate)
	var out float64
	if s, off := math.Round(v*rate), math.Round(t.offset*rate); math.Abs(v*rate-s) < 1e-6 && math.Abs(t.offset*rate-off) < 1e-6 {
		out = (s + off) / rate
	} else {
		out = math.Round((v+t.offset)*1e6) / 1e6
	}
	m[k] = json.Number(strconv.FormatFloat(out, 'f', -1, 64))
	return out
}

// numberAt reads a number field of a small message without decoding it;
// 0 if absent (see fieldValue).
func numberAt(msg []byte, k string) float64 {
	v, _ := strconv.ParseFloat(string(fieldValue(msg, k)), 64)
	return v
}

// Resume results, for metrics.
const (
	resumeOK       = "ok"
	resumeNoRegion = "no_region"
	resumeLogFull  = "log_full"
)

// errLogFull: the stream's audio since its last final outgrew the log.
var errLogFull = errors.New("the resume log is full")

// Resume describes a stream's move between regions, for a ResumeObserver.
type Resume struct {
	From, To string // To is "" when no region could take the stream
	// Result is "ok", "no_region" (no region could take it) or
	// "log_full" (its audio since the last final outgrew the log: the
	// stream could not move; To is "").
	Result string
	// Gap is the time from the leg's loss to the next message the client
	// got from the new region (0 if none came, or the move failed).
	Gap time.Duration
	// Replayed is the audio sent again, in seconds.
	Replayed float64
}

// A ResumeObserver (an Observer that also has this method) is told of
// every stream move. It must be quick and safe for concurrent use.
type ResumeObserver interface {
	ObserveResume(Resume)
}

// resumed counts a move and tells the observer, if it listens.
func (h *Handler) resumed(r Resume) {
	h.resumes.record(r)
	if o, ok := h.opts.Observer.(ResumeObserver); ok {
		o.ObserveResume(r)
	}
}

// resumeStats counts streams moved between regions.
type resumeStats struct {
	mu      sync.Mutex
	byRoute map[ResumeKey]uint64
	gaps    []time.Duration // the latest gaps, for percentiles
}

// ResumeKey names a move: from a region, to one ("" when none could take
// the stream), with its result.
type ResumeKey struct{ From, To, Result string }

func (s *resumeStats) record(r Resume) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byRoute == nil {
		s.byRoute = map[ResumeKey]uint64{}
	}
	s.byRoute[ResumeKey{r.From, r.To, r.Result}]++
	if r.Gap > 0 {
		if len(s.gaps) == 1024 {
			s.gaps = s.gaps[1:]
		}
		s.gaps = append(s.gaps, r.Gap)
	}
}

// ResumeStats are the counts of streams moved between regions.
type ResumeStats struct {
	Moves map[ResumeKey]uint64
	Gaps  []time.Duration // the latest (up to 1,024) losses to the next message from the new region, oldest first
}

// Resumes returns the counts of streams moved between regions.
func (h *Handler) Resumes() ResumeStats {
	s := &h.resumes
	s.mu.Lock()
	defer s.mu.Unlock()
	out := ResumeStats{Moves: make(map[ResumeKey]uint64, len(s.byRoute)), Gaps: slices.Clone(s.gaps)}
	for k, v := range s.byRoute {
		out.Moves[k] = v
	}
	return out
}

// fluxTrack is listenTrack's counterpart for Flux (/v2/listen): turns
// instead of finals. A move happens at the last EndOfTurn: the new region
// hears the audio of the turn in progress again, its Connected is not
// passed on, the last Configure is sent to it first (and its answer not
// passed on), every sequence_id continues the client's count, turn_index
// continues from the turns already ended, audio windows (and word times,
// where there are any) are shifted, and a TurnInfo for audio the client
// already has a later one for is dropped.
type fluxTrack struct {
	format    audioFormat
	replayed  bool
	offset    float64
	eotEnd    float64 // the last EndOfTurn's audio_window_end
	turns     int     // EndOfTurns passed on
	turnBase  int     // the current leg's turn 0 is the client's turnBase
	lastEnd   float64 // the latest audio_window_end passed on
	lastSeq   int64   // the latest sequence_id passed on; -1 before any
	configure []byte  // the client's last Configure
	configAt  int64   // where in the audio it was sent
	sent      int     // Configures sent, and answered (ConfigureSuccess/Failure)
	answered  int
	swallow   int  // answers to a replayed Configure the client already has
	connected bool // the client has had Connected
}

func newFluxTrack(f audioFormat) *fluxTrack { return &fluxTrack{format: f, lastSeq: -1} }

func (t *fluxTrack) audio() audioFormat { return t.format }

// finished: Flux may end with no close frame after CloseStream, so a loss
// then is the end unless audio remains that no EndOfTurn covered.
func (t *fluxTrack) finished(pending bool) bool { return !pending }
func (t *fluxTrack) watermark() int64           { return t.format.bytesAt(t.eotEnd) }

func (t *fluxTrack) client(typ string, msg []byte, at int64) {
	if typ == "Configure" {
		t.configure, t.configAt = bytes.Clone(msg), at
		t.sent++
	}
}

// resumed sends the new region the last Configure: first, if it came
// before the audio replayed, else at its place. Its answer reaches the
// client only if the lost region had not answered it.
func (t *fluxTrack) resumed(start int64) ([][]byte, []queued) {
	t.replayed = true
	t.offset = t.format.seconds(start)
	t.turnBase = t.turns
	if t.configure == nil {
		return nil, nil
	}
	// The lost region's answers will never come: only the answer to this
	// replay is owed or not.
	t.swallow = 0
	if t.answered >= t.sent {
		t.swallow = 1
	}
	t.sent-- // sent again below, and counted again by client
	if t.configAt < start {
		t.sent++
		return [][]byte{t.configure}, nil
	}
	return nil, []queued{{at: t.configAt, msg: t.configure}}
}

func (t *fluxTrack) shift(typ string, msg []byte, out [][]byte) [][]byte {
	if !t.replayed {
		if typ == "TurnInfo" {
			var ti struct {
				Event string  `json:"event"`
				End   float64 `json:"audio_window_end"`
			}
			if json.Unmarshal(msg, &ti) == nil {
				t.lastEnd = max(t.lastEnd, ti.End)
				if ti.Event == "EndOfTurn" {
					t.eotEnd, t.turns = ti.End, t.turns+1
				}
			}
		}
		switch typ {
		case "ConfigureSuccess", "ConfigureFailure":
			t.answered++
		case "Connected":
			t.connected = true
		}
		if v, err := strconv.ParseInt(string(fieldValue(msg, "sequence_id")), 10, 64); err == nil {
			t.lastSeq = v
		}
		return append(out, msg)
	}
	switch typ {
	case "Connected":
		if t.connected {
			return out // the client has its Connected
		}
		t.connected = true
	case "ConfigureSuccess", "ConfigureFailure":
		if t.swallow > 0 {
			t.swallow--
			return out
		}
		t.answered++
	}
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(msg))
	d.UseNumber()
	if d.Decode(&m) != nil {
		return append(out, msg)
	}
	if typ == "TurnInfo" {
		start := t.shiftTime(m, "audio_window_start")
		end := t.shiftTime(m, "audio_window_end")
		_ = start
		if words, ok := m["words"].([]any); ok {
			for _, w := range words {
				if wm, ok := w.(map[string]any); ok {
					t.shiftTime(wm, "start")
					t.shiftTime(wm, "end")
				}
			}
		}
		if n, ok := m["turn_index"].(json.Number); ok {
			if v, err := n.Int64(); err == nil {
				m["turn_index"] = v + int64(t.turnBase)
			}
		}
		event, _ := m["event"].(string)
		if event != "EndOfTurn" && end <= t.lastEnd {
			return out // the client has this part of the turn already
		}
		t.lastEnd = max(t.lastEnd, end)
		if event == "EndOfTurn" {
			t.eotEnd, t.turns = end, t.turns+1
		}
	}
	if _, ok := m["sequence_id"]; ok {
		t.lastSeq++
		m["sequence_id"] = t.lastSeq
	}
	b, err := json.Marshal(m)
	if err != nil {
		return append(out, msg)
	}
	return append(out, b)
}

// shiftTime adds the leg's offset to m[k], on the sample grid when the
// value lies on it (as listenTrack.shiftField).
func (t *fluxTrack) shiftTime(m map[string]any, k string) float64 {
	lt := listenTrack{format: t.format, offset: t.offset}
	return lt.shiftField(m, k)
}
