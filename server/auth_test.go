package server

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	listenapi "github.com/deepgram/deepgram-go-sdk/v3/pkg/api/listen/v1/rest"
	interfaces "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/interfaces"
	listen "github.com/deepgram/deepgram-go-sdk/v3/pkg/client/listen"
	"github.com/gorilla/websocket"

	"github.com/earshot/earshot/sim"
)

var (
	clientKey  = testSecrets[0]
	clientKey2 = testSecrets[1]
	modalKey   = testSecrets[2]
	modalSec   = testSecrets[3]
	adminToken = testSecrets[4]
)

func digest(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// authRecorder is a region that records what reaches it: the headers, query
// and offered subprotocols of every request and handshake.
type authRecorder struct {
	mu   sync.Mutex
	seen []string // one line per request
}

func (rec *authRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	rec.seen = append(rec.seen, fmt.Sprintf("%s %s?%s %v", r.Method, r.URL.Path, r.URL.RawQuery, r.Header))
	rec.mu.Unlock()
	if websocket.IsWebSocketUpgrade(r) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			_ = c.WriteMessage(mt, msg)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"system_health":"Healthy"}`)
}

func (rec *authRecorder) all() string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return strings.Join(rec.seen, "\n")
}

// authRouter runs a router with keys in front of a recording region that
// is given Modal credentials from the environment.
func authRouter(t *testing.T, extra string) (*router, *authRecorder) {
	t.Setenv("EARSHOT_TEST_MODAL_KEY", modalKey)
	t.Setenv("EARSHOT_TEST_MODAL_SECRET", modalSec)
	t.Setenv("EARSHOT_TEST_CLIENT_KEY", clientKey2)
	t.Setenv("EARSHOT_TEST_ADMIN", adminToken)
	rec := &authRecorder{}
	up := httptest.NewServer(rec)
	t.Cleanup(up.Close)
	r := startRouter(t, fmt.Sprintf(`
admin_token: {env: EARSHOT_TEST_ADMIN}
auth:
  keys:
    - {name: acme, sha256: %s}
    - {name: internal, key: {env: EARSHOT_TEST_CLIENT_KEY}}
%s
regions:
  - name: us-east
    url: %s
    location: {lat: 39, lon: -77}
    headers:
      Modal-Key: {env: EARSHOT_TEST_MODAL_KEY}
      Modal-Secret: {env: EARSHOT_TEST_MODAL_SECRET}
`, digest(clientKey), extra, up.URL))
	return r, rec
}

// do sends a request and remembers the answer for the secret scan.
func do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	remember(fmt.Sprintf("%d %v %s", resp.StatusCode, resp.Header, body))
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp, string(body)
}

func get(t *testing.T, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return do(t, req)
}

func TestClientKeys(t *testing.T) {
	r, rec := authRouter(t, "")
	for _, h := range []string{"Token " + clientKey, "token " + clientKey, "TOKEN  " + clientKey,
		"Bearer " + clientKey, "bearer " + clientKey2} {
		if resp, body := get(t, r.url("/v1/models"), "Authorization", h); resp.StatusCode != 200 {
			t.Errorf("Authorization %.12q...: %d %s", h, resp.StatusCode, body)
		}
	}
	for name, h := range map[string][]string{
		"none":          nil,
		"wrong key":     {"Authorization", "Token sk-wrong"},
		"Basic":         {"Authorization", "Basic dXNlcjpwYXNz"},
		"no key":        {"Authorization", "Token"},
		"two headers":   {"Authorization", "Token " + clientKey, "Authorization", "Token " + clientKey},
		"key in header": {"X-Api-Key", clientKey},
	} {
		resp, _ := get(t, r.url("/v1/models"), h...)
		if resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: no WWW-Authenticate", name)
		}
		expectError(t, resp, 401, "INVALID_AUTH")
	}

	// Browsers: the key in the subprotocol, the scheme echoed.
	for _, scheme := range []string{"token", "bearer", "Token"} {
		d := websocket.Dialer{Subprotocols: []string{scheme, clientKey}}
		c, resp, err := d.Dial(r.ws("/v1/listen?model=nova-3"), nil)
		if err != nil {
			t.Fatalf("subprotocol %s: %v", scheme, err)
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != scheme {
			t.Errorf("echoed %q, want %q", got, scheme)
		}
		c.Close()
	}
	d := websocket.Dialer{Subprotocols: []string{"token", "sk-wrong"}}
	_, resp, err := d.Dial(r.ws("/v1/listen"), nil)
	if err == nil {
		t.Fatal("a wrong subprotocol key opened a stream")
	}
	expectError(t, resp, 401, "INVALID_AUTH")
	if r.logs.FilterMessageSnippet("stream refused: 401").Len() == 0 {
		t.Error("a refused stream was not logged plainly")
	}
	// The query form is off by default.
	_, resp, err = websocket.DefaultDialer.Dial(r.ws("/v1/listen?token="+clientKey), nil)
	if err == nil {
		t.Fatal("?token= was accepted though query_token is off")
	}
	expectError(t, resp, 401, "INVALID_AUTH")

	// Nothing of the client's credentials reached the region; the region's
	// own credentials did.
	seen := rec.all()
	for _, secret := range []string{clientKey, clientKey2, "sk-wrong"} {
		if strings.Contains(seen, secret) {
			t.Errorf("the region saw a client credential: %s", seen)
		}
	}
	if !strings.Contains(seen, modalKey) || !strings.Contains(seen, modalSec) {
		t.Errorf("the region did not get its Modal credentials: %s", seen)
	}
}

func TestQueryToken(t *testing.T) {
	r, rec := authRouter(t, "  query_token: true")
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen?model=nova-3&token="+clientKey+"&tag=x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	seen := rec.all()
	if strings.Contains(seen, clientKey) || !strings.Contains(seen, "?model=nova-3&tag=x ") {
		t.Errorf("the token was not stripped, or the rest changed: %s", seen)
	}
	// Only for streams.
	resp, _ := get(t, r.url("/v1/models?token="+clientKey))
	expectError(t, resp, 401, "INVALID_AUTH")
}

func TestKeyLimits(t *testing.T) {
	r := startRouter(t, fmt.Sprintf(`
auth:
  keys:
    - {name: slow, sha256: %s, rate: 1, burst: 2}
    - {name: few, sha256: %s, max_streams: 1, regions: [eu-west]}
regions:
  - {name: us-east, url: sim://us-east, location: {lat: 39, lon: -77}}
  - {name: eu-west, url: sim://eu-west, location: {lat: 53, lon: -6}}
routing: {allow_client_override: true}
`, digest(clientKey), digest(clientKey2)))
	slow := []string{"Authorization", "Token " + clientKey}
	for i := range 2 {
		if resp, body := get(t, r.url("/v1/models"), slow...); resp.StatusCode != 200 {
			t.Fatalf("request %d within the burst: %d %s", i, resp.StatusCode, body)
		}
	}
	resp, _ := get(t, r.url("/v1/models"), slow...)
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1 (one request a second)", ra)
	}
	expectError(t, resp, 429, "TOO_MANY_REQUESTS")

	// A key confined to eu-west is served there though us-east comes first,
	// and cannot name another region.
	few := []string{"Authorization", "Token " + clientKey2}
	if resp, _ := get(t, r.url("/v1/models"), few...); resp.Header.Get("X-Earshot-Region") != "eu-west" {
		t.Errorf("confined key served by %q, want eu-west", resp.Header.Get("X-Earshot-Region"))
	}
	resp, _ = get(t, r.url("/v1/models"), append(few, "X-Earshot-Region", "us-east")...)
	expectError(t, resp, 403, "REGION_NOT_ALLOWED")

	// One stream at a time.
	h := http.Header{"Authorization": {"Token " + clientKey2}}
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), h)
	if err != nil {
		t.Fatal(err)
	}
	_, resp, err = websocket.DefaultDialer.Dial(r.ws("/v1/listen"), h)
	if err == nil {
		t.Fatal("a second stream opened over max_streams")
	}
	expectError(t, resp, 429, "TOO_MANY_REQUESTS")
	c.Close()
	waitFor(t, "the stream to be given back", func() bool {
		c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), h)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func TestAdminToken(t *testing.T) {
	r, _ := authRouter(t, "")
	admin := "http://" + r.admin
	if resp, _ := get(t, admin+"/healthz"); resp.StatusCode != 200 {
		t.Errorf("/healthz needs no token, got %d", resp.StatusCode)
	}
	for _, h := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "Token " + adminToken}} {
		if resp, _ := get(t, admin+"/status", h...); resp.StatusCode != 401 {
			t.Errorf("/status with %v: %d, want 401", h, resp.StatusCode)
		}
	}
	resp, body := get(t, admin+"/status", "Authorization", "Bearer "+adminToken)
	if resp.StatusCode != 200 || !strings.Contains(body, `"regions"`) {
		t.Errorf("/status with the token: %d %s", resp.StatusCode, body)
	}
}

// TestStreamIdle closes a stream on which nothing has been said.
func TestStreamIdle(t *testing.T) {
	r := startRouter(t, strings.Replace(simRegions(""), "timeouts: {close_grace: 2s}", "timeouts: {close_grace: 1s, stream_idle: 300ms}", 1))
	start := time.Now() // before the dial: the router's clock starts during it
	c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseInternalServerErr) || !strings.Contains(err.Error(), "stream idle") {
		t.Fatalf("read: %v, want close 1011 stream idle", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout", took)
	}
}

// TestConnectionCap holds both connections a router allows with streams: a
// third connection is not served until one of them closes.
func TestConnectionCap(t *testing.T) {
	r := startRouter(t, simRegions("")+"limits: {max_connections: 2}\n")
	var streams []*websocket.Conn
	for range 2 {
		c, _, err := websocket.DefaultDialer.Dial(r.ws("/v1/listen"), nil)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, c)
	}
	conn, err := net.Dial("tcp", r.api)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 1)); err == nil || n > 0 {
		t.Fatal("a third connection was served over max_connections")
	}
	streams[0].Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	head, err := io.ReadAll(conn)
	if !strings.HasPrefix(string(head), "HTTP/1.1 200") {
		t.Errorf("after a slot freed: %q, %v", head[:min(len(head), 40)], err)
	}
	streams[1].Close()
}

// TestTLS terminates TLS with a certificate that is replaced on disk while
// the router runs.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pool := x509.NewCertPool()
	writeCert(t, certFile, keyFile, "first", pool)
	r := startRouter(t, simRegions("")+fmt.Sprintf("tls: {cert: %s, key: %s}\n", certFile, keyFile))
	client := func(max uint16) *http.Client {
		return &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: max}}}
	}
	resp, err := client(0).Get("https://" + r.api + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.TLS.PeerCertificates[0].Subject.CommonName != "first" || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("served %s over %x", resp.TLS.PeerCertificates[0].Subject.CommonName, resp.TLS.Version)
	}
	if _, err := client(tls.VersionTLS11).Get("https://" + r.api + "/v1/models"); err == nil {
		t.Error("TLS 1.1 was accepted")
	}
	// Replace the pair, as cert-manager or certbot would.
	writeCert(t, certFile, keyFile, "second", pool)
	waitFor(t, "the new certificate", func() bool {
		resp, err := client(0).Get("https://" + r.api + "/v1/models")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName == "second"
	})
}

// writeCert writes a self-signed certificate for localhost and trusts it.
func writeCert(t *testing.T, certFile, keyFile, cn string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool.AddCert(cert)
	kb, _ := x509.MarshalECPrivateKey(key)
	write := func(path string, block *pem.Block) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	write(certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestSecretScanCatchesLeaks checks the suite's secret scan itself: a
// planted secret is found, then removed so the suite passes.
func TestSecretScanCatchesLeaks(t *testing.T) {
	seen.Lock()
	n := len(seen.text)
	seen.text = append(seen.text, "log line with "+adminToken)
	seen.Unlock()
	leaked := leakedSecrets()
	seen.Lock()
	seen.text = append(seen.text[:n], seen.text[n+1:]...)
	seen.Unlock()
	if len(leaked) != 1 || !strings.Contains(leaked[0], "admin-token") {
		t.Errorf("the scan found %v in a planted line", leaked)
	}
}

// TestSDKWithKeys points the official Go SDK at a router that requires
// keys: with a key it transcribes; with a wrong one it gets INVALID_AUTH.
func TestSDKWithKeys(t *testing.T) {
	sdkEnv(t)
	r := startRouter(t, fmt.Sprintf("\nauth:\n  keys:\n    - {name: acme, sha256: %s}\n", digest(clientKey))+
		strings.Replace(simRegions(""), "routing: {allow_client_override: true}\n", "", 1))
	audio := sim.WAV(sim.Synthesize(testWords, 16000, 2.0), 16000, 1)
	for _, tc := range []struct {
		key  string
		want string
	}{{clientKey, ""}, {"sk-wrong", "401"}} {
		rc := listen.NewREST(tc.key, &interfaces.ClientOptions{Host: "http://" + r.api})
		t.Cleanup(rc.CloseIdleConnections)
		res, err := listenapi.New(rc).FromStream(t.Context(), bytes.NewReader(audio), &interfaces.PreRecordedTranscriptionOptions{Model: "nova-3"})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("with the key: %v", err)
		case tc.want == "" && res.Results.Channels[0].Alternatives[0].Transcript != testTranscript:
			t.Errorf("with the key: transcript %q", res.Results.Channels[0].Alternatives[0].Transcript)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("with a wrong key: %v, want a %s", err, tc.want)
		}
		if err != nil {
			remember(err.Error())
		}
	}
}
