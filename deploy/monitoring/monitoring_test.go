package monitoring

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/moegrid/moegrid/cluster/etcdtest"
)

const (
	repoRoot      = "../.."
	dashboardFile = "../grafana/moegrid.json"
	alertsFile    = "../prometheus/alerts.yaml"
)

// prometheusBuiltins are series Prometheus makes itself for every target.
var prometheusBuiltins = []string{"up"}

var (
	stringLit   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	labelBlock  = regexp.MustCompile(`\{[^{}]*\}`)
	rangeBlock  = regexp.MustCompile(`\[[^\[\]]*\]`)
	grouping    = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	identifier  = regexp.MustCompile(`[a-zA-Z0-9_:.$]+`)
	metricName  = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	promqlWords = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
)

// metricNames returns the metric names a PromQL expression reads: the
// identifiers left once strings, label matchers, ranges and grouping
// clauses are removed, less functions (followed by "("), keywords and
// numbers.
func metricNames(expr string) []string {
	expr = stringLit.ReplaceAllString(expr, `""`)
	expr = labelBlock.ReplaceAllString(expr, " ")
	expr = rangeBlock.ReplaceAllString(expr, " ")
	expr = grouping.ReplaceAllString(expr, " ")
	var names []string
	for _, loc := range identifier.FindAllStringIndex(expr, -1) {
		word := expr[loc[0]:loc[1]]
		call := strings.HasPrefix(strings.TrimLeft(expr[loc[1]:], " \t\n"), "(")
		// Numbers (0.99, 1e3) and template variables ($value) are no names.
		if !metricName.MatchString(word) || call || slices.Contains(promqlWords, strings.ToLower(word)) {
			continue
		}
		names = append(names, word)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up{job="moegrid-router"} == 0`, []string{"up"}},
		{`histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x=~"a|b"}[5m]))) > 1e3`, []string{"a_seconds_bucket"}},
		{`sum by (node) (rate(x_total[$__rate_interval])) / on (node) group_left y`, []string{"x_total", "y"}},
		{`min_over_time(sum(w)[10m:1m]) > 0 and on () v offset 5m`, []string{"v", "w"}},
		{`absent(up{job="r"}) or vector(0)`, []string{"up"}},
		{`max by (instance) (a / b) > 0.9`, []string{"a", "b"}},
	} {
		if got := metricNames(tc.expr); !cmp.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// definedMetrics returns every series name the repository's code can
// export: the prometheus.*Opts literals and NewDesc calls of its non-test
// Go files (a histogram adds _bucket, _sum and _count), etcd's metrics from
// a real embedded etcd's registry, and Prometheus' own.
func definedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, n := range prometheusBuiltins {
		names[n] = true
	}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != repoRoot && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		return metricsInFile(path, names)
	})
	if err != nil {
		t.Fatal(err)
	}
	etcdtest.Start(t)
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "etcd_") {
			addSeries(names, f.GetName(), f.GetType().String() == "HISTOGRAM")
		}
	}
	return names
}

func addSeries(names map[string]bool, name string, histogram bool) {
	names[name] = true
	if histogram {
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			names[name+s] = true
		}
	}
}

// metricsInFile adds the metrics defined in a Go file to names.
func metricsInFile(path string, names map[string]bool) error {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return err
	}
	// String constants and variables of the file, wherever declared, for
	// Opts fields given by name (const ns, sub = "moegrid", "coordinator").
	consts := map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for i, name := range vs.Names {
				if i < len(vs.Values) {
					if s, ok := stringValue(vs.Values[i], nil); ok {
						consts[name.Name] = s
					}
				}
			}
		}
		return true
	})
	var bad error
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CompositeLit:
			sel, ok := n.Type.(*ast.SelectorExpr)
			if !ok || !isPackage(sel.X, "prometheus") || !strings.HasSuffix(sel.Sel.Name, "Opts") {
				return true
			}
			parts := map[string]string{}
			for _, e := range n.Elts {
				kv, ok := e.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				if key == nil || (key.Name != "Namespace" && key.Name != "Subsystem" && key.Name != "Name") {
					continue
				}
				s, ok := stringValue(kv.Value, consts)
				if _, param := kv.Value.(*ast.Ident); !ok && !param {
					bad = fmt.Errorf("%s: cannot read the %s of a metric", path, key.Name)
					return false
				}
				parts[key.Name] = s
			}
			if parts["Name"] == "" {
				// A name from a helper's parameter is read where the
				// helper is called: see helperHistograms.
				return true
			}
			addSeries(names, prometheus.BuildFQName(parts["Namespace"], parts["Subsystem"], parts["Name"]), sel.Sel.Name == "HistogramOpts")
		case *ast.CallExpr:
			sel, ok := n.Fun.(*ast.SelectorExpr)
			if ok && isPackage(sel.X, "prometheus") && sel.Sel.Name == "NewDesc" && len(n.Args) > 0 {
				if s, ok := stringValue(n.Args[0], consts); ok {
					names[s] = true
				}
			}
		}
		return true
	})
	if bad != nil {
		return bad
	}
	return helperHistograms(f, path, consts, names)
}

// helperHistograms reads metrics made by a file-local helper such as the
// router's histogram(name, help, buckets): a function literal whose body
// builds HistogramOpts with Name from its first parameter and fixed
// Namespace and Subsystem, called with a literal name.
func helperHistograms(f *ast.File, path string, consts map[string]string, names map[string]bool) error {
	helpers := map[string][2]string{} // helper name → namespace, subsystem
	ast.Inspect(f, func(n ast.Node) bool {
		as, ok := n.(*ast.AssignStmt)
		if !ok || len(as.Lhs) != 1 || len(as.Rhs) != 1 {
			return true
		}
		fl, ok := as.Rhs[0].(*ast.FuncLit)
		id, _ := as.Lhs[0].(*ast.Ident)
		if !ok || id == nil || len(fl.Type.Params.List) == 0 || len(fl.Type.Params.List[0].Names) == 0 {
			return true
		}
		param := fl.Type.Params.List[0].Names[0].Name
		ast.Inspect(fl.Body, func(n ast.Node) bool {
			cl, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			sel, ok := cl.Type.(*ast.SelectorExpr)
			if !ok || !isPackage(sel.X, "prometheus") || sel.Sel.Name != "HistogramOpts" {
				return true
			}
			var ns, sub string
			fromParam := false
			for _, e := range cl.Elts {
				kv, _ := e.(*ast.KeyValueExpr)
				if kv == nil {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				switch {
				case key == nil:
				case key.Name == "Namespace":
					ns, _ = stringValue(kv.Value, consts)
				case key.Name == "Subsystem":
					sub, _ = stringValue(kv.Value, consts)
				case key.Name == "Name":
					v, _ := kv.Value.(*ast.Ident)
					fromParam = v != nil && v.Name == param
				}
			}
			if fromParam {
				helpers[id.Name] = [2]string{ns, sub}
			}
			return true
		})
		return true
	})
	var bad error
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		fn, _ := call.Fun.(*ast.Ident)
		if fn == nil || len(call.Args) == 0 {
			return true
		}
		h, ok := helpers[fn.Name]
		if !ok {
			return true
		}
		name, ok := stringValue(call.Args[0], consts)
		if !ok {
			bad = fmt.Errorf("%s: cannot read the name given to %s", path, fn.Name)
			return false
		}
		addSeries(names, prometheus.BuildFQName(h[0], h[1], name), true)
		return true
	})
	return bad
}

func isPackage(x ast.Expr, name string) bool {
	id, ok := x.(*ast.Ident)
	return ok && id.Name == name
}

func stringValue(e ast.Expr, consts map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.Ident:
		s, ok := consts[e.Name]
		return s, ok
	}
	return "", false
}

// grafanaDashboard is the part of a Grafana dashboard the test reads.
type grafanaDashboard struct {
	Title  string         `json:"title"`
	UID    string         `json:"uid"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

// ruleFile is a Prometheus rule file, as a PrometheusRule's spec holds it.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// TestMonitoringUsesExportedMetrics checks both files' structure and that
// every metric their expressions read is one moegrid (or etcd, or
// Prometheus itself) exports.
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	defined := definedMetrics(t)
	for _, want := range []string{"moegrid_router_time_to_first_token_seconds_bucket", "moegrid_coordinator_leader", "moegrid_router_expert_replicas", "etcd_server_has_leader"} {
		if !defined[want] {
			t.Fatalf("the metric scan missed %s: it would let a renamed metric pass", want)
		}
	}
	exprs := map[string]string{} // where → expression

	t.Run("grafana", func(t *testing.T) {
		b, err := os.ReadFile(dashboardFile)
		if err != nil {
			t.Fatal(err)
		}
		var d grafanaDashboard
		dec := json.NewDecoder(strings.NewReader(string(b)))
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", dashboardFile, err)
		}
		if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
			t.Fatalf("%s: a dashboard needs a title, a uid and panels", dashboardFile)
		}
		ids := map[int]bool{}
		for _, p := range d.Panels {
			if ids[p.ID] {
				t.Errorf("panel id %d is used twice", p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: grid position %+v does not fit Grafana's 24 columns", p.Title, p.GridPos)
			}
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				exprs[fmt.Sprintf("%s: panel %q, query %s", dashboardFile, p.Title, tg.RefID)] = tg.Expr
			}
		}
	})

	t.Run("alerts", func(t *testing.T) {
		b, err := os.ReadFile(alertsFile)
		if err != nil {
			t.Fatal(err)
		}
		var rf ruleFile
		if err := yaml.UnmarshalStrict(b, &rf); err != nil {
			t.Fatalf("%s: %v", alertsFile, err)
		}
		if len(rf.Groups) == 0 {
			t.Fatalf("%s has no rule groups", alertsFile)
		}
		alerts := map[string]bool{}
		for _, g := range rf.Groups {
			if g.Name == "" || len(g.Rules) == 0 {
				t.Errorf("group %q: a group needs a name and rules", g.Name)
			}
			for _, r := range g.Rules {
				if r.Alert == "" {
					t.Errorf("group %s: a rule without an alert name", g.Name)
					continue
				}
				if alerts[r.Alert] {
					t.Errorf("alert %s is defined twice", r.Alert)
				}
				alerts[r.Alert] = true
				if r.For != "" {
					if _, err := time.ParseDuration(r.For); err != nil {
						t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
					}
				}
				if sev := r.Labels["severity"]; sev != "critical" && sev != "warning" {
					t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, sev)
				}
				if r.Annotations["summary"] == "" {
					t.Errorf("alert %s has no summary", r.Alert)
				}
				exprs[fmt.Sprintf("%s: alert %s", alertsFile, r.Alert)] = r.Expr
			}
		}
	})

	for where, expr := range exprs {
		if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
			t.Errorf("%s: unbalanced brackets in %q", where, expr)
		}
		names := metricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: %q reads no metric", where, expr)
		}
		for _, n := range names {
			if !defined[n] {
				t.Errorf("%s: %q reads %s, which nothing exports", where, expr, n)
			}
		}
	}
}
