package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/auth"
)

var controlSeeds = []string{
	`{"type":"CloseStream"}`,
	`{ "type" : "Finalize" }`,
	"{\n\t\"type\":\r\n\"CloseStream\"\n}",
	`{"type":"KeepAlive"}`,
	`{"type":"\u0043loseStream"}`,
	`{"meta":{"type":"x"},"type":"CloseStream"}`,
	`{"type":"CloseStream","type":"KeepAlive"}`,
	`{"x\"type":"CloseStream"}`,
	`{"type":"CloseStream"`,
	`{"type":5}`,
	`not json`,
	"",
	"\xff\xfe",
}

// topLevelType finds, in the JSON object msg, the first member whose key is
// written exactly "type": where its key starts and its value as written.
// ok is false if msg is not a JSON object or has no such member.
func topLevelType(msg []byte) (keyAt int, value []byte, ok bool) {
	if !json.Valid(msg) {
		return 0, nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(msg))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return 0, nil, false
	}
	for dec.More() {
		before := dec.InputOffset()
		if _, err := dec.Token(); err != nil {
			return 0, nil, false
		}
		after := dec.InputOffset()
		raw := msg[before:after]
		start := int(before) + len(raw) - len(bytes.TrimLeft(raw, " \t\r\n,"))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return 0, nil, false
		}
		if string(msg[start:after]) == `"type"` {
			return start, v, true
		}
	}
	return 0, nil, false
}

// FuzzControlMessage checks the sniff of a client's text message for
// CloseStream. It never panics; what it finds is a quoted run of msg; and
// on a JSON object whose first "type" in the text is its top-level "type"
// key (whatever the JSON whitespace around it), it finds exactly that
// member's string value, so isCloseStream agrees with a JSON decoder.
//
// Not asserted, because the sniff does not promise it (it reads the first
// "type" in the text and does not decode escapes): agreement with
// encoding/json on messages with a nested or escaped "type", a key in
// another case, or duplicate keys. encoding/json reads CloseStream in each
// of these, and the sniff does not:
//
//	{"type":"\u0043loseStream"}
//	{"TYPE":"CloseStream"}
//	{"meta":{"type":"x"},"type":"CloseStream"}
//	{"type":"KeepAlive","type":"CloseStream"}
//
// and the sniff reads CloseStream where encoding/json does not in
// {"type":"CloseStream","type":"KeepAlive"} and {"x\"type":"CloseStream"}.
func FuzzControlMessage(f *testing.F) {
	for _, s := range controlSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		got := isCloseStream(msg)
		mt := messageType(msg)
		if got != (string(mt) == "CloseStream") {
			t.Fatalf("isCloseStream(%q) = %v but messageType = %q", msg, got, mt)
		}
		if mt != nil {
			// mt is a run of msg (a subslice: cap tells where it starts)
			// between two quotes, with no quote inside.
			off := cap(msg) - cap(mt)
			if off < 1 || off+len(mt) >= len(msg) || msg[off-1] != '"' || msg[off+len(mt)] != '"' ||
				bytes.IndexByte(mt, '"') >= 0 {
				t.Fatalf("messageType(%q) = %q is not a quoted run of the message", msg, mt)
			}
		}
		keyAt, v, ok := topLevelType(msg)
		if !ok || bytes.Index(msg, []byte(`"type"`)) != keyAt || bytes.IndexByte(v, '\\') >= 0 {
			return
		}
		var want []byte
		if len(v) >= 2 && v[0] == '"' {
			want = v[1 : len(v)-1]
		}
		if !bytes.Equal(mt, want) || (mt == nil) != (want == nil) {
			t.Fatalf("messageType(%q) = %q, want %q", msg, mt, want)
		}
		if got != (string(v) == `"CloseStream"`) {
			t.Fatalf("isCloseStream(%q) = %v, but its type is %s", msg, got, v)
		}
	})
}

// FuzzCopyControl sends client text messages through copyControl to a real
// loopback WebSocket peer standing for the region: valid UTF-8 arrives
// whole and unchanged as one text message, CloseStream is noted exactly when
// the sniff of the first 256 bytes finds it, and invalid UTF-8 is refused
// as a read error without anything being sent.
func FuzzCopyControl(f *testing.F) {
	for _, s := range controlSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"padding":"` + strings.Repeat("x", 250) + `","type":"CloseStream"}`))

	accepted := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		accepted <- c
	}))
	f.Cleanup(srv.Close)
	dst, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = dst.Close() })
	region := <-accepted
	f.Cleanup(func() { _ = region.Close() })

	type message struct {
		mt   int
		data []byte
		err  error
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		valid := utf8.Valid(msg)
		got := make(chan message, 1)
		if valid {
			go func() {
				_ = region.SetReadDeadline(time.Now().Add(10 * time.Second))
				mt, data, err := region.ReadMessage()
				got <- message{mt, data, err}
			}()
		}
		st := &stream{}
		var stats pumpStats
		err := st.copyControl(dst, bytes.NewReader(msg), &stats)
		if !valid {
			var re readErr
			if !errors.As(err, &re) || !errors.Is(re.err, errInvalidUTF8) {
				t.Fatalf("copyControl(%q) = %v, want a read error for invalid UTF-8", msg, err)
			}
			if stats != (pumpStats{}) || st.closeStreamSent.Load() {
				t.Fatalf("invalid UTF-8 was counted (%+v) or noted as CloseStream", stats)
			}
			return
		}
		if err != nil {
			t.Fatalf("copyControl(%q): %v", msg, err)
		}
		m := <-got
		if m.err != nil {
			t.Fatalf("the region read: %v", m.err)
		}
		if m.mt != websocket.TextMessage || !bytes.Equal(m.data, msg) {
			t.Fatalf("the region got a type %d message %q, want text %q", m.mt, m.data, msg)
		}
		if stats.messages != 1 || stats.bytes != int64(len(msg)) {
			t.Fatalf("stats = %+v after one message of %d bytes", stats, len(msg))
		}
		if want := isCloseStream(msg[:min(len(msg), 256)]); st.closeStreamSent.Load() != want {
			t.Fatalf("copyControl(%q) noted CloseStream = %v, want %v", msg, !want, want)
		}
	})
}

// FuzzStripQueryParam checks that stripQueryParam removes every parameter
// named token (after unescaping the name) and keeps every other one byte
// for byte, in order, so that the query the region sees means what the
// client's meant, the key aside.
//
// Empty parameters before the first kept one ("&a", "token=k&&a") are
// dropped although the doc says the rest is left exactly as written: they
// mean nothing to a query parser, so that is allowed here.
func FuzzStripQueryParam(f *testing.F) {
	for _, s := range []string{
		"token=k", "model=nova-3&token=k&language=en", "tok%65n=k&a=1", "TOKEN=k&token", "a=1&&token=k&b=%zz",
		"token%3Dx=1", "a=1;token=k", "&a", "token=k&&a", "t+oken=1&token+=2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got := stripQueryParam(raw, "token")
		var kept []string
		if raw != "" {
			for _, p := range strings.Split(raw, "&") {
				name, _, _ := strings.Cut(p, "=")
				if un, err := url.QueryUnescape(name); err == nil && un == "token" {
					continue
				}
				kept = append(kept, p)
			}
		}
		for len(kept) > 0 && kept[0] == "" {
			kept = kept[1:]
		}
		if want := strings.Join(kept, "&"); got != want {
			t.Fatalf("stripQueryParam(%q) = %q, want %q", raw, got, want)
		}
		if got != "" {
			for _, p := range strings.Split(got, "&") {
				name, _, _ := strings.Cut(p, "=")
				if un, err := url.QueryUnescape(name); err == nil && un == "token" {
					t.Fatalf("stripQueryParam(%q) = %q keeps %q", raw, got, p)
				}
			}
		}
		// What a query parser makes of the result: the client's query
		// without token.
		before, _ := url.ParseQuery(raw)
		after, _ := url.ParseQuery(got)
		delete(before, "token")
		if _, ok := after["token"]; ok {
			t.Fatalf("stripQueryParam(%q) = %q still has a token parameter", raw, got)
		}
		if len(before) != 0 || len(after) != 0 {
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("stripQueryParam(%q) = %q: parsed %v, want %v", raw, got, after, before)
			}
		}
	})
}

// FuzzSubprotocolEcho checks that a browser that authenticates with the
// subprotocol form gets its scheme echoed, as it requires: whenever
// auth.ParseSubprotocol accepts a Sec-WebSocket-Protocol header, the
// subprotocol chosen from what gorilla parses of that header is that
// scheme; and that the choice is always one the client offered.
func FuzzSubprotocolEcho(f *testing.F) {
	for _, s := range []string{"token, KEY", "Bearer,eyJ.x.y", "chat, superchat", " TOKEN ,\tKEY", "token", "x, token, KEY"} {
		f.Add(s, "")
	}
	f.Add("chat, superchat", "superchat")
	f.Add("chat, superchat", "other")
	f.Fuzz(func(t *testing.T, header, regionChose string) {
		r := &http.Request{Header: http.Header{"Sec-Websocket-Protocol": {header}}}
		offered := websocket.Subprotocols(r)
		p := chooseSubprotocol(offered, regionChose)
		if p != "" && !slices.Contains(offered, p) {
			t.Fatalf("chooseSubprotocol(%q, %q) = %q, which was not offered", offered, regionChose, p)
		}
		if scheme, _, ok := auth.ParseSubprotocol([]string{header}); ok && p != scheme {
			t.Fatalf("header %q authenticates with scheme %q, but %q is echoed", header, scheme, p)
		}
	})
}
