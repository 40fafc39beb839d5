package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of Run.
type Report struct {
	Machine  Machine   `json:"machine"`
	Started  time.Time `json:"started"`
	Duration float64   `json:"duration_seconds"`
	Results  []Result  `json:"results"`
}

// Result is what one scenario (one size of it) measured.
type Result struct {
	Scenario Scenario `json:"scenario"`
	// Label says what was run: "storm 10000 conns x 10 events".
	Label string `json:"label"`
	// Sidecar says which sidecar was measured: started (with its pid) or given.
	Sidecar string   `json:"sidecar"`
	Figures []Figure `json:"figures"`
	// Notes are measurements that explain the figures (CPU use, memory
	// breakdown, the sidecar's own counters) and anything that went wrong.
	Notes []string `json:"notes,omitempty"`
}

// Units of a Figure's value.
const (
	UnitSeconds = "s"
	UnitBytes   = "bytes"
	UnitCount   = "count"
	UnitEvents  = "events/s"
	UnitFrames  = "frames/s"
)

// Figure is one measured number, with the baseline measured next to it and
// the target it is held to, when it has them.
type Figure struct {
	Name     string    `json:"name"`
	Unit     string    `json:"unit"`
	Value    float64   `json:"value"`
	Baseline *Baseline `json:"baseline,omitempty"`
	Target   *Target   `json:"target,omitempty"`
}

// Baseline is the same figure measured on the alternative, in the same run.
type Baseline struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	// Ratio is the figure's value divided by the baseline's; absent when
	// the baseline is 0.
	Ratio *float64 `json:"ratio,omitempty"`
}

// Target is the goal a figure is held to, and whether it was met.
type Target struct {
	Goal string `json:"goal"`
	Met  bool   `json:"met"`
}

func (r *Result) add(f Figure) { r.Figures = append(r.Figures, f) }

func (r *Result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// withBaseline sets f's baseline and the ratio of the two.
func (f Figure) withBaseline(name string, v float64) Figure {
	b := &Baseline{Name: name, Value: v}
	if q := ratio(f.Value, v); !math.IsNaN(q) {
		b.Ratio = &q
	}
	f.Baseline = b
	return f
}

// ratioAtMost holds f to value/baseline <= max.
func (f Figure) ratioAtMost(max float64) Figure {
	met := f.Baseline != nil && f.Baseline.Ratio != nil && *f.Baseline.Ratio <= max
	f.Target = &Target{Goal: fmt.Sprintf("<= %.1fx baseline", max), Met: met}
	return f
}

// ratioAtLeast holds f to value/baseline >= min.
func (f Figure) ratioAtLeast(min float64) Figure {
	met := f.Baseline != nil && f.Baseline.Ratio != nil && *f.Baseline.Ratio >= min
	f.Target = &Target{Goal: fmt.Sprintf(">= %.1fx baseline", min), Met: met}
	return f
}

// below holds f to value < max (strictly, or <= when inclusive).
func (f Figure) below(max float64, inclusive bool) Figure {
	met, op := f.Value < max, "<"
	if inclusive {
		met, op = f.Value <= max, "<="
	}
	f.Target = &Target{Goal: op + " " + formatValue(f.Unit, max), Met: met}
	return f
}

// WriteTable writes the report as an aligned table.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "machine: %d cpus (GOMAXPROCS %d), %s memory, %s, linux %s, %d fds\n",
		m.CPUs, m.GOMAXPROCS, formatBytes(float64(m.MemoryBytes)), m.GoVersion, m.Kernel, m.FileLimit)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tFIGURE\tTHREADBUS\tBASELINE\tRATIO\tTARGET\tBASELINE IS")
	for _, res := range r.Results {
		for _, f := range res.Figures {
			base, bval, rat, tgt := "", "", "", ""
			if f.Baseline != nil {
				base, bval = f.Baseline.Name, formatValue(f.Unit, f.Baseline.Value)
				if f.Baseline.Ratio != nil {
					rat = fmt.Sprintf("%.2fx", *f.Baseline.Ratio)
				}
			}
			if f.Target != nil {
				verdict := "met"
				if !f.Target.Met {
					verdict = "MISSED"
				}
				tgt = f.Target.Goal + ": " + verdict
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", res.Label, f.Name, formatValue(f.Unit, f.Value), bval, rat, tgt, base)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, res := range r.Results {
		if len(res.Notes) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s):\n", res.Label, res.Sidecar)
		for _, n := range res.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	return nil
}

// WriteJSON writes the report as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // targets read "<= 2.0x", not "\u003c= 2.0x"
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("bench report: %w", err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("bench report: %w", err)
	}
	return nil
}

// Missed lists the figures that missed their target.
func (r *Report) Missed() []string {
	var out []string
	for _, res := range r.Results {
		for _, f := range res.Figures {
			if f.Target != nil && !f.Target.Met {
				out = append(out, res.Label+": "+f.Name)
			}
		}
	}
	return out
}

func formatValue(unit string, v float64) string {
	switch unit {
	case UnitSeconds:
		return formatSeconds(v)
	case UnitBytes:
		return formatBytes(v)
	case UnitCount:
		return fmt.Sprintf("%.0f", v)
	default:
		return formatRate(v) + " " + unit
	}
}

func formatSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", s*1e6)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", s*1e3)
	default:
		return fmt.Sprintf("%.2fs", s)
	}
}

func formatBytes(b float64) string {
	switch {
	case math.Abs(b) < 1<<20:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	case math.Abs(b) < 1<<30:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	default:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	}
}

// formatRate writes a rate with thousands separators.
func formatRate(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
