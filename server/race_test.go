//go:build race

package server

// raceEnabled: the race detector slows everything several times over;
// tests that bound a latency allow for it.
const raceEnabled = true
