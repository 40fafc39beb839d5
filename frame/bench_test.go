package frame

import (
	"strings"
	"testing"
)

// benchFrames are what the legacy frontend sends (BRIEF.md), with text of a
// typical length.
var benchFrames = []struct {
	name string
	data []byte
}{
	{"start_agent", []byte(`{"type":"start_agent","payload":{"user_request":"` + strings.Repeat("Summarise the open incidents for me. ", 6) + `","thread_id":null,"context":{},"settings":{}}}`)},
	{"user_message", []byte(`{"type":"user_message","payload":{"content":"` + strings.Repeat("Can you also check the logs from yesterday? ", 8) + `","references":[],"thread_id":"thread_ab12cd34ef56"}}`)},
	{"switch_thread", []byte(`{"type":"switch_thread","payload":{"thread_id":"thread_cd34ef56ab12","since":41,"epoch":"sxn2k0e8rwg0"}}`)},
	{"stop_agent", []byte(`{"type":"stop_agent","payload":{}}`)},
	{"ping", []byte(`{"type":"ping","timestamp":1764300000000,"connection_id":"c_9f8e7d6c5b4a"}`)},
}

// BenchmarkParse compares Parse with parseReference, the implementation it
// replaced, on the same frames in the same run.
func BenchmarkParse(b *testing.B) {
	for _, f := range benchFrames {
		for _, impl := range []struct {
			name  string
			parse func([]byte) (Client, error)
		}{{"new", Parse}, {"reference", parseReference}} {
			b.Run(f.name+"/"+impl.name, func(b *testing.B) {
				b.SetBytes(int64(len(f.data)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := impl.parse(f.data); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
