// Summarizes a V8 .cpuprofile (node --cpu-prof; BENCH_PROFILE=1 npm run bench writes the
// gateway's): self time by function and by file, so the hot spots can be read without DevTools.
// Usage: node bench/profile-summary.js <file.cpuprofile> [top=30] [function name]
// It also prints the gateway's own functions (dist/) by total time (their callees included): where
// a request's hooks and steps spend, whichever library does the work.
import { readFileSync } from 'node:fs';

const [file, topArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/profile-summary.js <file.cpuprofile> [top]');
  process.exit(2);
}
const top = Number(topArg ?? 30);
const profile = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const selfMicros = new Map();
// timeDeltas[i] is the time before sample i; attribute it to that sample's node. The profiler's
// own stop (node:inspector, when BENCH_PROFILE ends the profile) is not the gateway's time.
profile.samples.forEach((id, i) => {
  if (byId.get(id).callFrame.url === 'node:inspector') return;
  selfMicros.set(id, (selfMicros.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
});
const total = [...selfMicros.values()].reduce((a, b) => a + b, 0);

const shortUrl = (url) => url.replace(/^file:\/\/.*?\/(node_modules|dist|bench)\//, '$1/').replace(/^node:/, 'node:');
const bump = (map, key, micros) => map.set(key, (map.get(key) ?? 0) + micros);
const byFunction = new Map();
const byFile = new Map();
for (const [id, micros] of selfMicros) {
  const { callFrame } = byId.get(id);
  const where = callFrame.url ? `${shortUrl(callFrame.url)}:${callFrame.lineNumber + 1}` : '(native)';
  bump(byFunction, `${callFrame.functionName || '(anonymous)'} ${where}`, micros);
  const pkg = /node_modules\/((@[^/]+\/)?[^/]+)/.exec(callFrame.url)?.[1];
  bump(byFile, pkg ? `node_modules/${pkg}` : callFrame.url ? shortUrl(callFrame.url) : `(${callFrame.functionName || 'native'})`, micros);
}
const print = (title, map) => {
  console.log(`\n${title} (of ${(total / 1000).toFixed(0)} ms sampled)`);
  for (const [key, micros] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((100 * micros) / total).toFixed(1).padStart(5)} %  ${(micros / 1000).toFixed(0).padStart(6)} ms  ${key}`);
  }
};
print('self time by function', byFunction);
print('self time by file or package', byFile);

// Total time of the gateway's functions: each sample counts once for every distinct dist/ function on its stack.
{
  const parentOf = new Map();
  for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id);
  const label = (callFrame) => `${callFrame.functionName || '(anonymous)'} ${shortUrl(callFrame.url)}:${callFrame.lineNumber + 1}`;
  const totalByFunction = new Map();
  for (const [id, micros] of selfMicros) {
    const seen = new Set();
    for (let at = id; at !== undefined; at = parentOf.get(at)) {
      const { callFrame } = byId.get(at);
      if (!shortUrl(callFrame.url).startsWith('dist/')) continue;
      const key = label(callFrame);
      if (seen.has(key)) continue;
      seen.add(key);
      bump(totalByFunction, key, micros);
    }
  }
  print('total time of the gateway\'s functions (dist/, callees included)', totalByFunction);
}

// With a third argument, the call paths (5 frames up) that lead to functions of that name.
const callersOf = process.argv[4];
if (callersOf) {
  const parent = new Map();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const paths = new Map();
  for (const [id, micros] of selfMicros) {
    if (byId.get(id).callFrame.functionName !== callersOf) continue;
    const frames = [];
    for (let at = parent.get(id); at !== undefined && frames.length < 6; at = parent.get(at)) {
      const { callFrame } = byId.get(at);
      frames.push(`${callFrame.functionName || '(anon)'}@${shortUrl(callFrame.url).split('/').pop()}:${callFrame.lineNumber + 1}`);
    }
    bump(paths, frames.join(' < '), micros);
  }
  console.log(`\ncallers of ${callersOf}`);
  for (const [path, micros] of [...paths].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log(`${(micros / 1000).toFixed(0).padStart(6)} ms  ${path}`);
}
