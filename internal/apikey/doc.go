// Package apikey authenticates the router's clients by API key and holds
// each key to its quotas.
//
// A key is "mgk_<id>_<secret>": the id names the key's entry so that a
// lookup is one map access, and the secret is 32 random bytes in hex. The
// id in a presented key is only a hint: a key is valid when the SHA-256 of
// the whole key string equals the entry's hash (compared in constant time).
// Keys are high-entropy, so a fast hash is enough; a slow password KDF
// would only cost every request time. The key file (see File) holds ids,
// hashes, limits, the APIs a key may call and whether it is disabled,
// never a key itself. A Guard polls the file and swaps in a new set when
// its bytes change (a Kubernetes Secret's symlink swap included); a file
// that does not parse is logged and the old set stays in force.
//
// # Admission and quotas
//
// Each key has a count of requests in flight (MaxInFlight, 0 = unlimited)
// and a token bucket (TokensPerMinute, 0 = unlimited) that starts full,
// holds at most TokensPerMinute tokens and refills continuously at
// TokensPerMinute/60 per second. A request is admitted when its key has
// fewer than MaxInFlight requests in flight and its bucket holds at least
// one token. The prompt's tokens are charged once the request has been
// read (Charge), the completion's tokens as they are generated; the bucket
// may go negative, and a running request is never cut short. A refused
// request gets ResourceExhausted (HTTP 429) with a retry-after of the
// whole seconds (rounded up, at least 1) until the bucket holds a token
// again, or 1 second when the in-flight limit refused it.
//
// Errors map to UNAUTHENTICATED/401 (no key, malformed or unknown key),
// PERMISSION_DENIED/403 (a disabled key, or an API the key may not call)
// and RESOURCE_EXHAUSTED/429. Logs and metrics name a key by its id, never
// by the key.
package apikey
