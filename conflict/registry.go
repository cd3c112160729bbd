package conflict

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// Factory makes a resolver. fallback is the resolver to hand the conflicts
// it cannot decide to (never nil); a resolver that always decides may
// ignore it.
type Factory func(fallback Resolver) Resolver

// Registry maps resolver names to factories. NewRegistry holds the
// built-in resolvers; a custom build registers its own before building the
// Set. It is safe for concurrent use.
type Registry struct {
	mu        sync.RWMutex
	factories map[string]Factory
}

// NewRegistry returns a registry holding the built-in resolvers: "lww",
// "version", "causal" and "merge".
func NewRegistry() *Registry {
	return &Registry{factories: map[string]Factory{
		NameLWW:     func(Resolver) Resolver { return LWW{} },
		NameVersion: func(fb Resolver) Resolver { return VersionWins{Fallback: fb} },
		NameCausal:  func(fb Resolver) Resolver { return Causal{Fallback: fb} },
		NameMerge:   func(fb Resolver) Resolver { return Merge{Fallback: fb} },
	}}
}

// Register adds a resolver under name: 1 to 64 characters of a-z, 0-9,
// '-', '_' and '.', starting with a letter. It fails with ErrInvalidName,
// or ErrDuplicate when the name is taken (built-in names included).
func (r *Registry) Register(name string, f Factory) error {
	if err := checkResolverName(name); err != nil {
		return err
	}
	if f == nil {
		return fmt.Errorf("register resolver %q: nil factory", name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.factories[name]; ok {
		return fmt.Errorf("%w: %q", ErrDuplicate, name)
	}
	r.factories[name] = f
	return nil
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Sorted(maps.Keys(r.factories))
}

// Has reports whether name is registered.
func (r *Registry) Has(name string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.factories[name]
	return ok
}

// New makes the resolver registered under name, with fallback (nil: LWW).
// Its decisions name it when the resolver leaves Decision.Resolver empty.
// It fails with ErrUnknownResolver.
func (r *Registry) New(name string, fallback Resolver) (Resolver, error) {
	r.mu.RLock()
	f, ok := r.factories[name]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q (registered: %s)", ErrUnknownResolver, name, strings.Join(r.Names(), ", "))
	}
	res := f(orLWW(fallback))
	if res == nil {
		return nil, fmt.Errorf("resolver %q: factory returned nil", name)
	}
	return named{name: name, r: res}, nil
}

// named fills in Decision.Resolver when a resolver leaves it empty.
type named struct {
	name string
	r    Resolver
}

func (n named) Resolve(ctx context.Context, c Conflict) (Decision, error) {
	d, err := n.r.Resolve(ctx, c)
	if err == nil && d.Resolver == "" {
		d.Resolver = n.name
	}
	return d, err
}

func checkResolverName(name string) error {
	if len(name) == 0 || len(name) > 64 {
		return fmt.Errorf("%w: resolver name %q must be 1 to 64 characters", ErrInvalidName, name)
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.')
		if !ok {
			return fmt.Errorf("%w: resolver name %q: only a-z, 0-9, '-', '_' and '.', starting with a letter",
				ErrInvalidName, name)
		}
	}
	return nil
}

// checkGovernor applies the remote's naming rules to a governor name.
func checkGovernor(g string) error {
	switch {
	case g == "":
		return fmt.Errorf("%w: empty governor name", ErrInvalidName)
	case len(g) > 1500:
		return fmt.Errorf("%w: governor name of %d bytes (at most 1500)", ErrInvalidName, len(g))
	case !utf8.ValidString(g):
		return fmt.Errorf("%w: governor name %q is not UTF-8", ErrInvalidName, g)
	case strings.Contains(g, "/"):
		return fmt.Errorf("%w: governor name %q contains '/'", ErrInvalidName, g)
	case g == "." || g == "..":
		return fmt.Errorf("%w: governor name %q", ErrInvalidName, g)
	case len(g) >= 4 && strings.HasPrefix(g, "__") && strings.HasSuffix(g, "__"):
		return fmt.Errorf("%w: governor name %q is reserved (__x__)", ErrInvalidName, g)
	}
	return nil
}

// DefaultResolver is the resolver, and the fallback, used when a
// configuration names none.
const DefaultResolver = NameLWW

// Choice is the resolver for a governor and the fallback it hands the
// conflicts it cannot decide to. Empty names mean DefaultResolver.
type Choice struct {
	Resolver string
	Fallback string
}

func (c Choice) withDefaults() Choice {
	if c.Resolver == "" {
		c.Resolver = DefaultResolver
	}
	if c.Fallback == "" {
		c.Fallback = DefaultResolver
	}
	return c
}

func (c Choice) String() string {
	c = c.withDefaults()
	return c.Resolver + ":" + c.Fallback
}

// Config says which resolver applies to each governor. The zero value
// applies lww everywhere.
type Config struct {
	Default   Choice            // governors not listed
	Governors map[string]Choice // by governor name
}

// For returns the choice for governor, defaults applied.
func (c Config) For(governor string) Choice {
	if ch, ok := c.Governors[governor]; ok {
		return ch.withDefaults()
	}
	return c.Default.withDefaults()
}

// Validate checks governor names and that every resolver and fallback is
// registered in r. Errors wrap ErrInvalidConfig and ErrInvalidName or
// ErrUnknownResolver.
func (c Config) Validate(r *Registry) error {
	check := func(where string, ch Choice) error {
		ch = ch.withDefaults()
		for _, n := range []string{ch.Resolver, ch.Fallback} {
			if !r.Has(n) {
				return fmt.Errorf("%w: %s: %w: %q (registered: %s)", ErrInvalidConfig, where, ErrUnknownResolver, n,
					strings.Join(r.Names(), ", "))
			}
		}
		return nil
	}
	if err := check("default", c.Default); err != nil {
		return err
	}
	for _, g := range slices.Sorted(maps.Keys(c.Governors)) {
		if err := checkGovernor(g); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if err := check("governor "+g, c.Governors[g]); err != nil {
			return err
		}
	}
	return nil
}

// String formats c in the form ParseConfig reads, sorted by governor.
func (c Config) String() string {
	parts := []string{"*=" + c.Default.String()}
	for _, g := range slices.Sorted(maps.Keys(c.Governors)) {
		parts = append(parts, g+"="+c.Governors[g].String())
	}
	return strings.Join(parts, ",")
}

// ParseConfig reads a configuration from a flag or environment value: a
// comma-separated list of governor=resolver[:fallback], where the governor
// "*" sets the default, e.g. "*=causal:version,orders=merge". Spaces around
// items are ignored; "" is the zero Config. It checks the syntax and the
// names' form; Validate checks them against a registry.
func ParseConfig(s string) (Config, error) {
	var c Config
	seen := make(map[string]bool)
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		i := strings.LastIndexByte(item, '=')
		if i < 0 {
			return Config{}, fmt.Errorf("%w: %q: want governor=resolver[:fallback]", ErrInvalidConfig, item)
		}
		g, spec := strings.TrimSpace(item[:i]), strings.TrimSpace(item[i+1:])
		res, fb, _ := strings.Cut(spec, ":")
		ch := Choice{Resolver: strings.TrimSpace(res), Fallback: strings.TrimSpace(fb)}
		if err := checkResolverName(ch.Resolver); err != nil {
			return Config{}, fmt.Errorf("%w: %q: %w", ErrInvalidConfig, item, err)
		}
		if strings.Contains(spec, ":") {
			if err := checkResolverName(ch.Fallback); err != nil {
				return Config{}, fmt.Errorf("%w: %q: %w", ErrInvalidConfig, item, err)
			}
		}
		if seen[g] {
			return Config{}, fmt.Errorf("%w: governor %q listed twice", ErrInvalidConfig, g)
		}
		seen[g] = true
		if g == "*" {
			c.Default = ch
			continue
		}
		if err := checkGovernor(g); err != nil {
			return Config{}, fmt.Errorf("%w: %q: %w", ErrInvalidConfig, item, err)
		}
		if c.Governors == nil {
			c.Governors = make(map[string]Choice)
		}
		c.Governors[g] = ch
	}
	return c, nil
}

// Set is the resolvers of a Config, built by Registry.Build. It is
// immutable and safe for concurrent use.
type Set struct {
	cfg       Config
	def       Resolver
	governors map[string]Resolver
}

// Build validates cfg and makes the resolver of every governor it lists and
// of the default. Each is made with its fallback, itself made with lww as
// its own fallback, and is guarded: see Set.For.
func (r *Registry) Build(cfg Config) (*Set, error) {
	if err := cfg.Validate(r); err != nil {
		return nil, err
	}
	make1 := func(ch Choice) (Resolver, error) {
		ch = ch.withDefaults()
		fb, err := r.New(ch.Fallback, LWW{})
		if err != nil {
			return nil, err
		}
		primary, err := r.New(ch.Resolver, fb)
		if err != nil {
			return nil, err
		}
		return guard{name: ch.Resolver, primary: primary, fallback: fb}, nil
	}
	s := &Set{cfg: cfg, governors: make(map[string]Resolver, len(cfg.Governors))}
	var err error
	if s.def, err = make1(cfg.Default); err != nil {
		return nil, err
	}
	for g, ch := range cfg.Governors {
		if s.governors[g], err = make1(ch); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Config returns the configuration s was built from.
func (s *Set) Config() Config { return s.cfg }

// For returns the resolver of governor. It never fails: when the configured
// resolver returns an error, panics or returns a decision that does not
// validate, its fallback decides, and when that fails too, LWW. The
// decision's Resolver and Reason say so.
func (s *Set) For(governor string) Resolver {
	if r, ok := s.governors[governor]; ok {
		return r
	}
	return s.def
}

// Resolve settles c with the resolver of its governor (see For). The error
// is always nil.
func (s *Set) Resolve(ctx context.Context, c Conflict) (Decision, error) {
	return s.For(c.Key.Governor).Resolve(ctx, c)
}

// guard runs primary, falling back on its failures.
type guard struct {
	name     string
	primary  Resolver
	fallback Resolver
}

func (g guard) Resolve(ctx context.Context, c Conflict) (Decision, error) {
	d, err := safeResolve(ctx, g.primary, c)
	if err == nil {
		return d, nil
	}
	fd, ferr := safeResolve(ctx, g.fallback, c)
	if ferr != nil {
		fd = lww(c)
		fd.Reason = fmt.Sprintf("fallback failed (%v); %s", ferr, fd.Reason)
	}
	fd.Resolver = g.name + "!>" + fd.Resolver
	fd.Reason = fmt.Sprintf("%s failed (%v); %s", g.name, err, fd.Reason)
	return fd, nil
}

// safeResolve calls r, turning a panic into an error and checking the
// decision.
func safeResolve(ctx context.Context, r Resolver, c Conflict) (d Decision, err error) {
	defer func() {
		if p := recover(); p != nil {
			d, err = Decision{}, fmt.Errorf("panic: %v", p)
		}
	}()
	d, err = r.Resolve(ctx, c)
	if err != nil {
		return Decision{}, err
	}
	if err := d.Validate(); err != nil {
		return Decision{}, err
	}
	return d, nil
}
