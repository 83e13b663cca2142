package placement

import (
	"cmp"
	"math/bits"
	"slices"
)

// shardInfo is a shard of the granularity being tried, with its size and the
// load of its expert.
type shardInfo struct {
	shard Shard
	bytes int64
	load  float64
}

// packer places the shards of one granularity. Shards and nodes are referred
// to by index: shards in canonical order (expert, first layer), nodes in ID
// order, so that index order is the deterministic tie-break everywhere.
type packer struct {
	minR, maxR int
	tol        float64
	model      Model
	k          int // shards per expert; expert e's are e*k .. e*k+k-1
	// stable restricts rebalancing (set when previous replicas were kept):
	// replicas move only from nodes above their capacity-proportional share
	// to newcomers (nodes that kept nothing: joined, or empty before) that
	// stay within theirs.
	stable    bool
	newcomers []bool
	// displaced counts kept replicas taken off their node to make room for
	// a required replica (each may cost a move).
	displaced int
	// kept holds the (shard, node) pairs taken over from the previous
	// placement; rebalancing moves other replicas first, as moving them
	// costs no extra load.
	kept map[[2]int]bool

	shards []shardInfo
	order  []int // shard indices, largest first, then canonical

	ids  []string       // nodes that can hold at least the smallest shard
	idx  map[string]int // node ID -> index, for lookups only
	caps []int64

	used     []int64   // bytes held per node
	replicas int       // replicas placed in all
	holders  [][]int   // per shard: nodes holding a replica
	onNode   [][]int   // per node: shards it holds
	experts  [][]int32 // per node, per expert: shards of that expert held
	// holding[e] counts the nodes holding some shard of expert e;
	// coHeld[n] sums holding[e]-1 over the experts node n holds: how often
	// n's experts are also on other nodes.
	holding []int
	coHeld  []int
	// expertSet[n] has bit e set while node n holds some shard of expert e.
	expertSet [][]uint64
}

func newPacker(n *normalized, k int) *packer {
	m := n.model
	p := &packer{
		minR: n.minR, maxR: n.maxR, tol: n.tol, model: m, k: k,
		kept: make(map[[2]int]bool),
		idx:  make(map[string]int, len(n.nodes)),
	}
	ranges := splitRanges(m.Layers, k)
	for e := range m.Experts {
		for _, r := range ranges {
			s := Shard{Expert: e, First: r[0], End: r[1]}
			p.shards = append(p.shards, shardInfo{shard: s, bytes: m.ShardBytes(s), load: n.load[e]})
		}
	}
	p.order = make([]int, len(p.shards))
	for s := range p.order {
		p.order[s] = s
	}
	slices.SortStableFunc(p.order, func(a, b int) int { return cmp.Compare(p.shards[b].bytes, p.shards[a].bytes) })

	smallest := int64(ranges[k-1][1]-ranges[k-1][0]) * m.BytesPerExpertLayer
	for _, nd := range n.nodes {
		if nd.CapacityBytes < smallest {
			continue // holds nothing at this granularity
		}
		p.idx[nd.ID] = len(p.ids)
		p.ids = append(p.ids, nd.ID)
		// No node holds more than one copy of the model, and clamping keeps
		// sums of capacities exact; no real node has a PiB for weights.
		p.caps = append(p.caps, min(nd.CapacityBytes, MaxModelBytes))
	}
	p.used = make([]int64, len(p.ids))
	p.onNode = make([][]int, len(p.ids))
	p.experts = make([][]int32, len(p.ids))
	for i := range p.experts {
		p.experts[i] = make([]int32, m.Experts)
	}
	p.holders = make([][]int, len(p.shards))
	p.holding = make([]int, m.Experts)
	p.coHeld = make([]int, len(p.ids))
	p.expertSet = make([][]uint64, len(p.ids))
	for i := range p.expertSet {
		p.expertSet[i] = make([]uint64, (m.Experts+63)/64)
	}
	return p
}

func (p *packer) holds(s, n int) bool { return slices.Contains(p.holders[s], n) }

func (p *packer) fits(s, n int) bool { return p.used[n]+p.shards[s].bytes <= p.caps[n] }

func (p *packer) add(s, n int) {
	p.replicas++
	p.holders[s] = append(p.holders[s], n)
	p.onNode[n] = append(p.onNode[n], s)
	p.used[n] += p.shards[s].bytes
	e := p.shards[s].shard.Expert
	if p.experts[n][e]++; p.experts[n][e] == 1 {
		p.shareExpert(n, e, +1)
	}
}

// shareExpert updates holding and coHeld when node n starts (+1) or stops
// (-1) holding some shard of expert e.
func (p *packer) shareExpert(n, e, delta int) {
	for m := range p.ids {
		if m != n && p.experts[m][e] > 0 {
			p.coHeld[m] += delta
		}
	}
	p.expertSet[n][e/64] ^= 1 << (e % 64)
	if delta > 0 {
		p.coHeld[n] += p.holding[e]
		p.holding[e]++
	} else {
		p.holding[e]--
		p.coHeld[n] -= p.holding[e]
	}
}

func (p *packer) remove(s, n int) {
	p.replicas--
	p.holders[s] = slices.DeleteFunc(p.holders[s], func(x int) bool { return x == n })
	p.onNode[n] = slices.DeleteFunc(p.onNode[n], func(x int) bool { return x == s })
	p.used[n] -= p.shards[s].bytes
	e := p.shards[s].shard.Expert
	if p.experts[n][e]--; p.experts[n][e] == 0 {
		p.shareExpert(n, e, -1)
	}
	delete(p.kept, [2]int{s, n})
}

// compareFill compares the fill (bytes held / capacity) of node a holding ua
// bytes with that of node b holding ub bytes.
func (p *packer) compareFill(a int, ua int64, b int, ub int64) int {
	return compareRatio(ua, p.caps[a], ub, p.caps[b])
}

// budget is the total number of replicas wanted: MinReplicas of every shard,
// or one per node that can hold a shard if there are more such nodes, capped
// by MaxReplicas.
func (p *packer) budget() int {
	t := max(len(p.shards)*p.minR, len(p.ids))
	if p.maxR > 0 {
		t = min(t, len(p.shards)*p.maxR)
	}
	return t
}

// run completes the placement. kept: the packer starts from previous
// replicas, so rebalancing only fills nodes up to their fair share. roomiest:
// place required replicas with the exact roomiest-first packing.
func (p *packer) run(kept, roomiest bool) bool {
	p.stable = kept
	t := p.budget()
	want := p.targets(t)
	p.trim(want)
	if !p.placeBase(roomiest) {
		return false
	}
	// Extra replicas first (a joining node takes new replicas rather than
	// existing ones), then rebalancing, which may make room for extras that
	// did not fit. Both only ever add replicas or make moves that end (see
	// rebalanceOnce), so the loop ends.
	for {
		placed := p.placeExtras(want, t)
		moved := p.rebalance()
		if placed == 0 && moved == 0 {
			return true
		}
	}
}

// keep adds the previous placement's replicas that still apply: the node is
// still schedulable and held the shard, or (when the granularity became
// finer) a shard of the same expert containing its layers, whose weights it
// therefore already has. Nodes whose capacity shrank shed shards until they
// fit, the most replicated ones first. It reports whether anything was kept.
func (p *packer) keep(prev *Placement) bool {
	for _, a := range prev.Assignments {
		e := a.Shard.Expert
		if e < 0 || e >= p.model.Experts {
			continue
		}
		for s := e * p.k; s < (e+1)*p.k; s++ {
			if sh := p.shards[s].shard; sh.First < a.Shard.First || sh.End > a.Shard.End {
				continue
			}
			for _, id := range a.Nodes {
				if n, ok := p.idx[id]; ok && !p.holds(s, n) {
					p.add(s, n)
					p.kept[[2]int{s, n}] = true
				}
			}
		}
	}
	for n := range p.ids {
		if p.used[n] <= p.caps[n] {
			continue
		}
		list := slices.Clone(p.onNode[n])
		slices.SortFunc(list, func(a, b int) int {
			if c := cmp.Compare(len(p.holders[b]), len(p.holders[a])); c != 0 {
				return c
			}
			if c := cmp.Compare(p.shards[b].bytes, p.shards[a].bytes); c != 0 {
				return c
			}
			return cmp.Compare(b, a)
		})
		for _, s := range list {
			if p.used[n] <= p.caps[n] {
				break
			}
			p.remove(s, n)
		}
	}
	p.newcomers = make([]bool, len(p.ids))
	for n := range p.ids {
		p.newcomers[n] = len(p.onNode[n]) == 0
	}
	return p.replicas > 0
}

// perReplica is the load per replica of shard s with r replicas. The
// conversion rounds explicitly, so no fused multiply-add changes a decision.
func (p *packer) perReplica(s, r int) float64 {
	return float64(p.shards[s].load / float64(r))
}

// hotter reports whether shard a with ra replicas should get an extra replica
// before shard b with rb: higher load per replica, ties to the lower index.
func (p *packer) hotter(a, ra, b, rb int) bool {
	x, y := p.perReplica(a, ra), p.perReplica(b, rb)
	return x > y || x == y && a < b
}

// hottest returns the shard that should get the next replica given counts c,
// among those below MaxReplicas that some node could still take; -1 if none.
func (p *packer) hottest(c []int) int {
	best := -1
	for s := range p.shards {
		if p.maxR > 0 && c[s] >= p.maxR || !p.placeable(s) {
			continue
		}
		if best < 0 || p.hotter(s, c[s], best, c[best]) {
			best = s
		}
	}
	return best
}

// placeable reports whether some node that does not hold shard s has room
// for it now.
func (p *packer) placeable(s int) bool {
	for n := range p.ids {
		if p.fits(s, n) && !p.holds(s, n) {
			return true
		}
	}
	return false
}

// coldest returns the shard whose load per replica stays lowest when it loses
// a replica, among those above MinReplicas and other than except; ties go to
// the higher index (the reverse of hotter). -1 if none.
func (p *packer) coldest(c []int, except int) int {
	best := -1
	for s := range p.shards {
		if s == except || c[s] <= p.minR {
			continue
		}
		if best < 0 || p.hotter(best, c[best]-1, s, c[s]-1) {
			best = s
		}
	}
	return best
}

// targets returns the wanted replica count of every shard, totalling t where
// the caps allow: the current counts (at least MinReplicas), adjusted to t by
// load, then with replicas moved from cold to hot shards where the load
// statistics differ by more than the tolerance.
func (p *packer) targets(t int) []int {
	c := make([]int, len(p.shards))
	sum := 0
	for s := range c {
		c[s] = max(len(p.holders[s]), p.minR)
		if p.maxR > 0 {
			c[s] = min(c[s], p.maxR)
		}
		sum += c[s]
	}
	for ; sum > t; sum-- {
		s := p.coldest(c, -1)
		if s < 0 {
			break
		}
		c[s]--
	}
	for ; sum < t; sum++ {
		s := p.hottest(c)
		if s < 0 {
			break
		}
		c[s]++
	}
	// Each shift lowers the sorted vector of loads per replica
	// lexicographically, so this ends; the bound is only a backstop.
	for range len(c) * (sum + 1) {
		hot := p.hottest(c)
		if hot < 0 {
			break
		}
		cold := p.coldest(c, hot)
		if cold < 0 {
			break
		}
		limit := float64((1 + p.tol) * p.perReplica(cold, c[cold]-1))
		if !(p.perReplica(hot, c[hot]) > limit) {
			break
		}
		c[cold]--
		c[hot]++
	}
	return c
}

// trim drops replicas beyond the wanted counts, from the fullest nodes.
func (p *packer) trim(want []int) {
	for s := range p.shards {
		for len(p.holders[s]) > want[s] {
			worst := -1
			for _, n := range p.holders[s] {
				if worst < 0 {
					worst = n
					continue
				}
				c := p.compareFill(n, p.used[n], worst, p.used[worst])
				if c > 0 || c == 0 && n > worst {
					worst = n
				}
			}
			p.remove(s, worst)
		}
	}
}

// placeBase gives every shard MinReplicas replicas. Balanced: round by round,
// largest shards first, each on the least full node after placement.
// Roomiest: shard by shard, each replica on the node with the most free
// bytes; for equal-size shards this succeeds whenever any placement exists
// (each shard taking the nodes with the most room is the Havel-Hakimi
// construction).
func (p *packer) placeBase(roomiest bool) bool {
	if roomiest {
		for _, s := range p.order {
			for len(p.holders[s]) < p.minR {
				if !p.placeOne(s, p.chooseRoomiest) {
					return false
				}
			}
		}
		return true
	}
	for r := 1; r <= p.minR; r++ {
		for _, s := range p.order {
			if len(p.holders[s]) < r && !p.placeOne(s, p.chooseBalanced) {
				return false
			}
		}
	}
	return true
}

// placeOne adds a required replica of shard s on the node choose picks or,
// when no node has room, on one made free by evictFor or ejectFor. It
// reports false when no node can take it.
func (p *packer) placeOne(s int, choose func(s int) int) bool {
	n := choose(s)
	if n < 0 {
		n = p.evictFor(s)
	}
	if n < 0 {
		n = p.ejectFor(s)
	}
	if n < 0 {
		return false
	}
	p.add(s, n)
	return true
}

// evictFor makes room for a required replica of shard s by dropping extra
// replicas (of shards held more than MinReplicas times), coldest first, from
// the node where that frees the most room, and returns the node; -1 if no
// node can make room that way.
func (p *packer) evictFor(s int) int {
	b := p.shards[s].bytes
	extras := func(n int) []int {
		var out []int
		for _, t := range p.onNode[n] {
			if len(p.holders[t]) > p.minR {
				out = append(out, t)
			}
		}
		return out
	}
	best := -1
	var bestRoom int64
	for n := range p.ids {
		if p.holds(s, n) {
			continue
		}
		room := p.caps[n] - p.used[n]
		for _, t := range extras(n) {
			room += p.shards[t].bytes
		}
		if room >= b && (best < 0 || room > bestRoom) {
			best, bestRoom = n, room
		}
	}
	if best < 0 {
		return -1
	}
	evict := extras(best)
	slices.SortFunc(evict, func(a, b int) int {
		if p.hotter(b, len(p.holders[b]), a, len(p.holders[a])) {
			return -1 // a is colder
		}
		return 1
	})
	for _, t := range evict {
		if p.fits(s, best) {
			break
		}
		if p.kept[[2]int{t, best}] {
			p.displaced++
		}
		p.remove(t, best)
	}
	return best
}

// ejectFor makes room for a required replica of shard s on some node by
// moving replicas off it to other nodes (one level of an ejection chain).
// Candidate nodes are tried in order of the fewest bytes to move, the
// largest replicas are moved first; a candidate whose replicas cannot all be
// re-placed is restored exactly. It returns the node that now has room for
// s, or -1.
func (p *packer) ejectFor(s int) int {
	b := p.shards[s].bytes
	type candidate struct {
		n    int
		need int64
	}
	var cands []candidate
	for n := range p.ids {
		if !p.holds(s, n) && p.caps[n] >= b {
			cands = append(cands, candidate{n, b - (p.caps[n] - p.used[n])})
		}
	}
	slices.SortStableFunc(cands, func(x, y candidate) int { return cmp.Compare(x.need, y.need) })
	for _, c := range cands {
		victims := slices.Clone(p.onNode[c.n])
		slices.SortFunc(victims, func(x, y int) int {
			if d := cmp.Compare(p.shards[y].bytes, p.shards[x].bytes); d != 0 {
				return d
			}
			return cmp.Compare(x, y)
		})
		var freed int64
		for i, t := range victims {
			if freed >= c.need {
				victims = victims[:i]
				break
			}
			freed += p.shards[t].bytes
		}
		wasKept := make([]bool, len(victims))
		for i, t := range victims {
			wasKept[i] = p.kept[[2]int{t, c.n}]
			p.remove(t, c.n)
		}
		p.add(s, c.n)
		placed := make([]int, 0, len(victims))
		for _, t := range victims {
			m := p.chooseBalanced(t)
			if m < 0 {
				break
			}
			p.add(t, m)
			placed = append(placed, m)
		}
		if len(placed) == len(victims) {
			for _, k := range wasKept {
				if k {
					p.displaced++
				}
			}
			p.remove(s, c.n) // the caller adds it
			return c.n
		}
		for i, m := range placed {
			p.remove(victims[i], m)
		}
		p.remove(s, c.n)
		for i, t := range victims {
			p.add(t, c.n)
			if wasKept[i] {
				p.kept[[2]int{t, c.n}] = true
			}
		}
	}
	return -1
}

// placeExtras places replicas beyond MinReplicas, hottest shard (per replica)
// first, up to the wanted counts, then tops up to t with the hottest shards
// that still fit somewhere. It returns the number placed.
func (p *packer) placeExtras(want []int, t int) int {
	failed := make([]bool, len(p.shards))
	placed := 0
	next := func(eligible func(s int) bool) int {
		best := -1
		for s := range p.shards {
			if failed[s] || !eligible(s) {
				continue
			}
			if best < 0 || p.hotter(s, len(p.holders[s]), best, len(p.holders[best])) {
				best = s
			}
		}
		return best
	}
	wanted := func(s int) bool { return len(p.holders[s]) < want[s] }
	capped := func(s int) bool { return p.maxR == 0 || len(p.holders[s]) < p.maxR }
	for _, eligible := range []func(int) bool{wanted, capped} {
		for p.replicas < t {
			s := next(eligible)
			if s < 0 {
				break
			}
			n := p.chooseBalanced(s)
			if n < 0 {
				failed[s] = true
				continue
			}
			p.add(s, n)
			placed++
		}
	}
	return placed
}

// chooseBalanced returns the node that should receive a replica of shard s:
// among nodes with room that do not hold s, the one least full after
// receiving it. Ties go to the node sharing the fewest experts with the
// shard's other holders, then to the node whose experts are held least often
// by other nodes (so that replicas of different experts do not pair up on
// the same nodes: with 8 nodes and 2 replicas this yields a ring, where two
// failures lose at most one expert and a failed node's load spreads over two
// nodes), then to the lower ID. -1 if none.
func (p *packer) chooseBalanced(s int) int {
	b := p.shards[s].bytes
	best := -1
	var bestKey [2]int // overlap, peers; computed lazily on ties
	haveKey := false
	for n := range p.ids {
		if !p.fits(s, n) || p.holds(s, n) {
			continue
		}
		if best < 0 {
			best, haveKey = n, false
			continue
		}
		c := p.compareFill(n, p.used[n]+b, best, p.used[best]+b)
		if c > 0 {
			continue
		}
		if c == 0 {
			if !haveKey {
				bestKey, haveKey = [2]int{p.overlap(best, s), p.coHeld[best]}, true
			}
			key := [2]int{p.overlap(n, s), p.coHeld[n]}
			if key[0] > bestKey[0] || key[0] == bestKey[0] && key[1] >= bestKey[1] {
				continue
			}
			best, bestKey = n, key
			continue
		}
		best, haveKey = n, false
	}
	return best
}

// overlap counts, over the holders of shard s, the experts node n has in
// common with each.
func (p *packer) overlap(n, s int) int {
	o := 0
	for _, h := range p.holders[s] {
		o += p.common(n, h)
	}
	return o
}

// common counts the experts nodes a and b both hold (some layers of).
func (p *packer) common(a, b int) int {
	c := 0
	for w, x := range p.expertSet[a] {
		c += bits.OnesCount64(x & p.expertSet[b][w])
	}
	return c
}

// chooseRoomiest returns the node with the most free bytes that can take a
// replica of shard s, ties to the lower ID; -1 if none.
func (p *packer) chooseRoomiest(s int) int {
	best := -1
	for n := range p.ids {
		if !p.fits(s, n) || p.holds(s, n) {
			continue
		}
		if best < 0 || p.caps[n]-p.used[n] > p.caps[best]-p.used[best] {
			best = n
		}
	}
	return best
}

// rebalance moves replicas until rebalanceOnce finds nothing to move and
// returns how many it moved.
func (p *packer) rebalance() int {
	moves := 0
	for p.rebalanceOnce() {
		moves++
	}
	return moves
}

// rebalanceOnce moves one replica from a node i to a node j if j, after
// receiving it, is still strictly less full than i was; when stable, only if
// i is above its capacity-proportional share of the bytes placed and j is a
// newcomer that stays within its own. It tries the fullest givers first; on
// each, the replicas placed in this computation before those kept from the
// previous placement (moving those costs no extra load), then larger shards
// first; and the emptiest receivers first. Every move replaces i's fill, the
// largest of the values it changes, by two smaller ones, so the sorted fill
// vector decreases lexicographically and repeated calls end.
func (p *packer) rebalanceOnce() bool {
	var total, capacity int64 // the share of node n is total*caps[n]/capacity
	for n := range p.ids {
		total += p.used[n]
		capacity += p.caps[n]
	}

	asc := make([]int, len(p.ids))
	for n := range asc {
		asc[n] = n
	}
	slices.SortStableFunc(asc, func(a, b int) int { return p.compareFill(a, p.used[a], b, p.used[b]) })
	desc := slices.Clone(asc)
	slices.SortStableFunc(desc, func(a, b int) int { return p.compareFill(b, p.used[b], a, p.used[a]) })

	for _, i := range desc {
		if p.used[i] == 0 {
			return false
		}
		if p.stable && compareRatio(p.used[i], p.caps[i], total, capacity) <= 0 {
			continue
		}
		shards := slices.Clone(p.onNode[i])
		slices.SortFunc(shards, func(a, b int) int {
			ka, kb := p.kept[[2]int{a, i}], p.kept[[2]int{b, i}]
			if ka != kb {
				if kb {
					return -1
				}
				return 1
			}
			if c := cmp.Compare(p.shards[b].bytes, p.shards[a].bytes); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		for _, s := range shards {
			for _, j := range asc {
				if p.compareFill(j, p.used[j], i, p.used[i]) >= 0 {
					break
				}
				if !p.fits(s, j) || p.holds(s, j) || p.stable && !p.newcomers[j] {
					continue
				}
				after := p.used[j] + p.shards[s].bytes
				if p.stable && compareRatio(after, p.caps[j], total, capacity) > 0 {
					continue
				}
				if p.compareFill(j, after, i, p.used[i]) < 0 {
					p.remove(s, i)
					p.add(s, j)
					return true
				}
			}
		}
	}
	return false
}

// result is the placement built from the packer's state, in canonical order.
func (p *packer) result() Placement {
	out := Placement{Model: p.model, Assignments: make([]Assignment, 0, len(p.shards))}
	for s, info := range p.shards {
		h := slices.Clone(p.holders[s])
		slices.Sort(h) // node index order is ID order
		nodes := make([]string, len(h))
		for i, n := range h {
			nodes[i] = p.ids[n]
		}
		out.Assignments = append(out.Assignments, Assignment{Shard: info.shard, Nodes: nodes})
	}
	return out
}
