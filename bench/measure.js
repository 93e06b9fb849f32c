// One measurement with autocannon: latency of each answer (to the microsecond, from its
// 'response' event: autocannon's own histogram keeps whole milliseconds), answers per second,
// and every kind of failure.
import autocannon from 'autocannon';

/**
 * autocannon appends every response body to a string (utf8-decoding it), which costs ~16 ms per
 * MiB of binary data: the client, not the server, would be measured. Bodies are counted, not kept.
 */
function discardBodies(client) {
  client.pipelinedRequests.addBody = () => {};
}

/** The q-quantile (0..1) of sorted numbers, by the nearest-rank method. */
export function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

export function median(values) {
  const sorted = values.filter((v) => v !== null && v !== undefined).sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Runs `connections` clients for `seconds` against one request; `keepLatencies` keeps every 2xx
 * answer's latency in ms (bounded by what `seconds` at `connections` can answer).
 */
export async function measure({ url, method = 'GET', headers = {}, body, connections, seconds, keepLatencies = false, minBytes = 0 }) {
  const latencies = [];
  const statuses = {};
  let short = 0;
  // sampleInt: autocannon checks for the end of `duration` once a sample, by default once a second.
  const run = autocannon({ url, method, headers, body, connections, duration: seconds, sampleInt: 100, timeout: 60, setupClient: discardBodies });
  run.on('response', (_client, status, bytes, ms) => {
    statuses[status] = (statuses[status] ?? 0) + 1;
    // An answer smaller than the image it should carry is a failure, whatever its status.
    if (bytes < minBytes) short++;
    if (keepLatencies && status >= 200 && status < 300) latencies.push(ms);
  });
  const result = await run;
  const ok = result['2xx'];
  return {
    connections,
    seconds: result.duration,
    ok,
    // A run that got no answer at all (seen twice here, with no error of any kind) is a failure,
    // and has no rate: a 0 would pull the rounds' median down.
    stalled: ok === 0 ? 1 : 0,
    requestsPerSecond: ok === 0 ? null : ok / result.duration,
    non2xx: result.non2xx,
    short,
    socketErrors: result.errors,
    timeouts: result.timeouts,
    statuses,
    latencies,
  };
}
