package sim

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
)

// How the engine reads audio before it listens for words: which container
// or raw encoding the bytes are in, and how long they last. Only linear16
// samples can carry the word encoding; every other format the engine can
// measure is heard as sound without speech.

// sampleKind is how one PCM sample is stored.
type sampleKind uint8

const (
	sampleS16   sampleKind = iota // signed 16-bit little-endian (linear16): the only format words are heard in
	sampleU8                      // unsigned 8-bit (8-bit WAV); silence is 0x80
	sampleS24                     // signed 24-bit little-endian
	sampleS32                     // signed 32-bit little-endian (linear32)
	sampleF32                     // IEEE float, 32-bit
	sampleF64                     // IEEE float, 64-bit
	sampleMulaw                   // G.711 mu-law; silence is 0xFF (and 0x7F, "minus zero")
	sampleAlaw                    // G.711 A-law; silence is 0xD5 (and 0x55)
)

// width is the size of one sample in bytes.
func (k sampleKind) width() int {
	switch k {
	case sampleU8, sampleMulaw, sampleAlaw:
		return 1
	case sampleS24:
		return 3
	case sampleS32, sampleF32:
		return 4
	case sampleF64:
		return 8
	}
	return 2
}

// level is what the word decoder hears of the sample at the start of p: the
// sample itself for linear16; for any other format 0 for digital silence
// and 1 for sound (which never opens a word).
func (k sampleKind) level(p []byte) int16 {
	silent := false
	switch k {
	case sampleS16:
		return int16(binary.LittleEndian.Uint16(p))
	case sampleU8:
		silent = p[0] == 0x80
	case sampleS24:
		silent = p[0]|p[1]|p[2] == 0
	case sampleS32:
		silent = binary.LittleEndian.Uint32(p) == 0
	case sampleF32:
		silent = math.Float32frombits(binary.LittleEndian.Uint32(p)) == 0 // +0 and -0
	case sampleF64:
		silent = math.Float64frombits(binary.LittleEndian.Uint64(p)) == 0
	case sampleMulaw:
		silent = p[0] == 0xFF || p[0] == 0x7F
	case sampleAlaw:
		silent = p[0] == 0xD5 || p[0] == 0x55
	}
	if silent {
		return 0
	}
	return 1
}

// rawEncodings are the encoding= values whose samples the engine measures.
var rawEncodings = map[string]sampleKind{
	"linear16": sampleS16,
	"linear32": sampleS32,
	"mulaw":    sampleMulaw,
	"alaw":     sampleAlaw,
}

// unmeasuredEncodings are the other encoding= values Deepgram accepts: the
// engine takes them but cannot tell how long their audio lasts.
var unmeasuredEncodings = map[string]bool{
	"flac": true, "opus": true, "ogg-opus": true, "speex": true,
	"amr-nb": true, "amr-wb": true, "g729": true,
}

// audioInput is how a request's audio is declared: its query's encoding
// (lower case, "" when not named), sample_rate and channels.
type audioInput struct {
	encoding   string
	sampleRate int
	channels   int
}

// checkListenEncoding accepts the encodings Deepgram's STT accepts.
func checkListenEncoding(enc string) error {
	if _, ok := rawEncodings[enc]; ok || enc == "" || unmeasuredEncodings[enc] {
		return nil
	}
	return fmt.Errorf("encoding %q is not supported (linear16, linear32, mulaw, alaw, flac, opus, ogg-opus, speex, amr-nb, amr-wb or g729)", enc)
}

// sniffBytes is how much of the audio's start is read to recognise a container.
const sniffBytes = 12

// sniffContainer names the container (other than WAV) that b starts with,
// from its magic bytes, or "" for none. b holds sniffBytes bytes, or all of
// a shorter input.
func sniffContainer(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte("OggS")):
		return "Ogg"
	case bytes.HasPrefix(b, []byte("fLaC")):
		return "FLAC"
	case bytes.HasPrefix(b, []byte{0x1A, 0x45, 0xDF, 0xA3}): // EBML
		return "WebM"
	case len(b) >= 8 && string(b[4:8]) == "ftyp":
		return "MP4"
	case bytes.HasPrefix(b, []byte("ID3")), isMPEGAudioFrame(b):
		return "MP3"
	case len(b) >= 2 && b[0] == 0xFF && b[1]&0xF6 == 0xF0: // ADTS sync, layer 0
		return "AAC"
	}
	return ""
}

// isMPEGAudioFrame reports whether b starts with a plausible MPEG audio
// frame header: 11 sync bits, a valid version, layer, bit rate and sample rate.
func isMPEGAudioFrame(b []byte) bool {
	if len(b) < 3 || b[0] != 0xFF || b[1]&0xE0 != 0xE0 {
		return false
	}
	version, layer := (b[1]>>3)&3, (b[1]>>1)&3
	bitrate, rate := b[2]>>4, (b[2]>>2)&3
	return version != 1 && layer != 0 && bitrate != 0xF && rate != 3
}

// isWAV reports whether b starts with a complete RIFF/WAVE signature.
func isWAV(b []byte) bool {
	return len(b) >= 12 && string(b[0:4]) == "RIFF" && string(b[8:12]) == "WAVE"
}

// unmeasuredWarning is the metadata warning for audio the engine cannot
// measure: what, and whether a query parameter (encoding) said so.
func unmeasuredWarning(what, parameter string) apiWarning {
	return apiWarning{
		Parameter: parameter,
		Type:      "unmeasured_audio",
		Message: fmt.Sprintf("the simulated engine cannot measure the duration of %s audio: "+
			"it reports duration 0 and hears no speech (send linear16, or WAV, to be measured)", what),
	}
}

// wavInfo is what the decoder takes from a WAV header.
type wavInfo struct {
	sampleRate int
	channels   int
	kind       sampleKind
	dataSize   int64  // -1 when the header leaves it open (0 or 0xFFFFFFFF)
	unmeasured string // set for a compressed format: its audio cannot be measured
}

// maxWAVHeader bounds how much the decoder buffers looking for the data chunk.
const maxWAVHeader = 64 << 10

// parseWAV reads a RIFF/WAVE header from the start of b. It returns the
// header's length once the "data" chunk has begun, or complete=false when b
// is too short to tell yet. PCM (8, 16, 24, 32 bits), IEEE float (32, 64
// bits), A-law and mu-law are measured; any other format code (ADPCM, MP3
// in WAV, ...) is reported in info.unmeasured rather than refused.
func parseWAV(b []byte) (info wavInfo, n int, complete bool, err error) {
	if len(b) < 12 {
		return info, 0, false, nil
	}
	if !isWAV(b) {
		return info, 0, false, fmt.Errorf("%w: not a RIFF/WAVE header", ErrUndecodable)
	}
	le := binary.LittleEndian
	haveFmt := false
	off := 12
	for {
		if len(b) < off+8 {
			return info, 0, false, nil
		}
		id, size := string(b[off:off+4]), int64(le.Uint32(b[off+4:]))
		off += 8
		if id == "data" {
			if !haveFmt {
				return info, 0, false, fmt.Errorf("%w: WAV data before fmt chunk", ErrUndecodable)
			}
			info.dataSize = size
			if size == 0 || size == 0xFFFFFFFF {
				info.dataSize = -1
			}
			return info, off, true, nil
		}
		if size > maxWAVHeader {
			return info, 0, false, fmt.Errorf("%w: WAV chunk %q too large for a header", ErrUndecodable, id)
		}
		end := off + int(size) + int(size&1) // chunks are padded to even sizes
		if len(b) < end {
			return info, 0, false, nil
		}
		if id == "fmt " {
			if size < 16 {
				return info, 0, false, fmt.Errorf("%w: short WAV fmt chunk", ErrUndecodable)
			}
			format, channels := le.Uint16(b[off:]), int(le.Uint16(b[off+2:]))
			rate, bits := int(le.Uint32(b[off+4:])), le.Uint16(b[off+14:])
			if channels < 1 || rate < 1 {
				return info, 0, false, fmt.Errorf("%w: WAV with %d channels at %d Hz", ErrUndecodable, channels, rate)
			}
			if format == 0xFFFE && size >= 40 { // WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the code
				format = le.Uint16(b[off+24:])
			} else if format == 0xFFFE {
				format = 1
			}
			info.sampleRate, info.channels, haveFmt = rate, channels, true
			info.kind, info.unmeasured = wavSampleKind(format, bits)
		}
		off = end
	}
}

// wavSampleKind maps a WAV format code and sample size to a sample kind, or
// names the format when the engine cannot measure it.
func wavSampleKind(format, bits uint16) (sampleKind, string) {
	switch {
	case format == 1 && bits == 8:
		return sampleU8, ""
	case format == 1 && bits == 16:
		return sampleS16, ""
	case format == 1 && bits == 24:
		return sampleS24, ""
	case format == 1 && bits == 32:
		return sampleS32, ""
	case format == 3 && bits == 32:
		return sampleF32, ""
	case format == 3 && bits == 64:
		return sampleF64, ""
	case format == 6 && bits == 8:
		return sampleAlaw, ""
	case format == 7 && bits == 8:
		return sampleMulaw, ""
	}
	return 0, fmt.Sprintf("WAV (format 0x%04X, %d bits)", format, bits)
}

// warnings are the metadata warnings for audio the decoder could not measure.
func (d *decoder) warnings() []apiWarning {
	if d.unmeasured == "" {
		return nil
	}
	parameter := ""
	if d.fromQuery {
		parameter = "encoding"
	}
	return []apiWarning{unmeasuredWarning(d.unmeasured, parameter)}
}
