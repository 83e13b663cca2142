package apikey

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Errors of Admit; the front ends map them to status codes.
var (
	ErrNoKey      = errors.New("apikey: no API key: send Authorization: Bearer <key>")
	ErrInvalidKey = errors.New("apikey: invalid API key")
	ErrDisabled   = errors.New("apikey: the API key is disabled")
	ErrNotAllowed = errors.New("apikey: the API key may not call this API")
)

// QuotaError refuses a request over its key's quota.
type QuotaError struct {
	ID string
	// Reason names the limit: "max_in_flight" or "tokens_per_minute".
	Reason string
	// RetryAfter is when the request may succeed, in whole seconds.
	RetryAfter time.Duration
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("apikey: key %q is over its %s quota; retry after %v", e.ID, e.Reason, e.RetryAfter)
}

// Config configures a Guard.
type Config struct {
	// File is the key file's path.
	File string
	// Poll is how often the file is checked for changes; 0 means 2s.
	Poll time.Duration
	// Now is the clock of the token buckets; nil means time.Now.
	Now func() time.Time
}

// Guard authenticates requests against a key file and holds each key to
// its quotas. It is safe for concurrent use.
type Guard struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu sync.Mutex
	// keys and last are protected by mu: the keys by id, and the file's
	// bytes they came from.
	keys map[string]*keyState
	last []byte
}

// keyState is a key's entry and its quota counters, which outlive
// reloads that keep the id.
type keyState struct {
	Entry
	inFlight int       // protected by Guard.mu
	tokens   float64   // protected by Guard.mu; may be negative
	filled   time.Time // protected by Guard.mu: when tokens was last refilled
}

// New reads the key file; a missing or bad file is an error here, unlike
// on reload.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Guard, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.File == "" {
		return nil, errors.New("apikey: a key file is required")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	g := &Guard{cfg: cfg, log: log, metrics: m}
	if _, err := g.Reload(); err != nil {
		return nil, err
	}
	return g, nil
}

// Run reloads the key file whenever its bytes change, until ctx is done.
// A file that cannot be read or parsed is logged and the keys in force
// stay.
func (g *Guard) Run(ctx context.Context) {
	t := time.NewTicker(g.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			changed, err := g.Reload()
			switch {
			case err != nil:
				g.log.Warn("API key file not reloaded; the previous keys stay", "file", g.cfg.File, "err", err)
			case changed:
				g.log.Info("API keys reloaded", "file", g.cfg.File, "keys", g.Len())
			}
		}
	}
}

// Reload reads the key file and, if its bytes changed and it parses,
// puts its keys in force. A key whose id stays keeps its counters.
func (g *Guard) Reload() (changed bool, err error) {
	data, err := readLimited(g.cfg.File)
	if err != nil {
		return false, err
	}
	g.mu.Lock()
	same := g.keys != nil && bytes.Equal(data, g.last)
	g.mu.Unlock()
	if same {
		return false, nil
	}
	f, err := Parse(data)
	if err != nil {
		return false, fmt.Errorf("%s: %w", g.cfg.File, err)
	}
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	keys := make(map[string]*keyState, len(f.Keys))
	for _, e := range f.Keys {
		ks, ok := g.keys[e.ID]
		if !ok {
			ks = &keyState{tokens: float64(e.TokensPerMinute), filled: now}
		}
		ks.Entry = e
		if ks.tokens > float64(e.TokensPerMinute) {
			ks.tokens = float64(e.TokensPerMinute)
		}
		keys[e.ID] = ks
	}
	g.keys, g.last = keys, data
	return true, nil
}

// Len is the number of keys in force.
func (g *Guard) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.keys)
}

// Admit authenticates key for api and, within the key's quotas, admits a
// request: the caller must Release the Admission when the request ends.
// The errors are ErrNoKey, ErrInvalidKey, ErrDisabled, ErrNotAllowed and
// *QuotaError.
func (g *Guard) Admit(key, api string) (*Admission, error) {
	a, id, err := g.admit(key, api)
	g.metrics.requests.WithLabelValues(id, outcome(err)).Inc()
	return a, err
}

// admit returns the key's id once the key is authenticated, "" before.
func (g *Guard) admit(key, api string) (*Admission, string, error) {
	if key == "" {
		return nil, "", ErrNoKey
	}
	id, ok := keyID(key)
	if !ok {
		return nil, "", ErrInvalidKey
	}
	hash := Hash(key)
	g.mu.Lock()
	defer g.mu.Unlock()
	ks, ok := g.keys[id]
	if !ok || subtle.ConstantTimeCompare([]byte(hash), []byte(ks.SHA256)) != 1 {
		return nil, "", ErrInvalidKey
	}
	switch {
	case ks.Disabled:
		return nil, id, ErrDisabled
	case len(ks.Allow) > 0 && !slices.Contains(ks.Allow, api):
		return nil, id, fmt.Errorf("%w: %s (allowed: %v)", ErrNotAllowed, api, ks.Allow)
	case ks.MaxInFlight > 0 && ks.inFlight >= ks.MaxInFlight:
		return nil, id, &QuotaError{ID: id, Reason: "max_in_flight", RetryAfter: time.Second}
	}
	if ks.TokensPerMinute > 0 {
		g.refillLocked(ks)
		if ks.tokens < 1 {
			rate := float64(ks.TokensPerMinute) / 60 // tokens per second
			secs := math.Max(1, math.Ceil((1-ks.tokens)/rate))
			return nil, id, &QuotaError{ID: id, Reason: "tokens_per_minute", RetryAfter: time.Duration(secs) * time.Second}
		}
	}
	ks.inFlight++
	return &Admission{g: g, ks: ks, id: id}, id, nil
}

// refillLocked adds the tokens earned since the last refill.
func (g *Guard) refillLocked(ks *keyState) {
	now := g.cfg.Now()
	if el := now.Sub(ks.filled); el > 0 {
		ks.tokens = math.Min(float64(ks.TokensPerMinute), ks.tokens+el.Seconds()*float64(ks.TokensPerMinute)/60)
	}
	ks.filled = now
}

func outcome(err error) string {
	var qe *QuotaError
	switch {
	case err == nil:
		return "admitted"
	case errors.Is(err, ErrNoKey), errors.Is(err, ErrInvalidKey):
		return "unauthenticated"
	case errors.Is(err, ErrDisabled), errors.Is(err, ErrNotAllowed):
		return "permission_denied"
	case errors.As(err, &qe):
		return "resource_exhausted"
	}
	return "error"
}

// Admission is an admitted request. Its methods are safe for concurrent
// use; a nil Admission (no authentication) does nothing.
type Admission struct {
	g    *Guard
	ks   *keyState
	id   string
	once sync.Once
}

// ID is the key's id.
func (a *Admission) ID() string { return a.id }

// Charge takes n tokens from the key's bucket; it may go negative.
func (a *Admission) Charge(n int) {
	if a == nil || n <= 0 {
		return
	}
	a.g.metrics.tokens.WithLabelValues(a.id).Add(float64(n))
	a.g.mu.Lock()
	defer a.g.mu.Unlock()
	if a.ks.TokensPerMinute > 0 {
		a.g.refillLocked(a.ks)
		a.ks.tokens -= float64(n)
	}
}

// Release ends the request; later calls do nothing.
func (a *Admission) Release() {
	if a == nil {
		return
	}
	a.once.Do(func() {
		a.g.mu.Lock()
		defer a.g.mu.Unlock()
		a.ks.inFlight--
	})
}

type ctxKey struct{}

// NewContext returns ctx carrying a.
func NewContext(ctx context.Context, a *Admission) context.Context {
	return context.WithValue(ctx, ctxKey{}, a)
}

// FromContext returns the Admission in ctx, or nil.
func FromContext(ctx context.Context) *Admission {
	a, _ := ctx.Value(ctxKey{}).(*Admission)
	return a
}

// IDFromContext returns the id of the key that ctx's request was admitted
// with, or false if it carries none.
func IDFromContext(ctx context.Context) (string, bool) {
	if a := FromContext(ctx); a != nil {
		return a.id, true
	}
	return "", false
}

// Charge charges n tokens to the key of ctx's request, if it has one.
func Charge(ctx context.Context, n int) { FromContext(ctx).Charge(n) }

type metrics struct {
	requests *prometheus.CounterVec
	tokens   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "apikey", Name: "requests_total",
			Help: "Requests by API key id (empty when unauthenticated) and outcome.",
		}, []string{"key", "outcome"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "apikey", Name: "tokens_total",
			Help: "Prompt and completion tokens charged, by API key id.",
		}, []string{"key"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.tokens} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("apikey: metrics: %w", err)
			}
		}
	}
	return m, nil
}
