import { randomBytes, createHash, subtle } from 'node:crypto';
for (const size of [1 << 20, 4 << 20]) {
  const img = randomBytes(size);
  for (let r = 0; r < 2; r++) {
    let s = performance.now();
    for (let i = 0; i < 50; i++) createHash('sha256').update(img).digest('hex');
    const sync = (performance.now() - s) / 50;
    // main-thread time of issuing 50 digests at once, then the wall time to finish them
    s = performance.now();
    const ps = [];
    for (let i = 0; i < 50; i++) ps.push(subtle.digest('SHA-256', img));
    const issue = (performance.now() - s) / 50;
    await Promise.all(ps);
    const wall = (performance.now() - s) / 50;
    // one at a time: latency
    s = performance.now();
    for (let i = 0; i < 20; i++) await subtle.digest('SHA-256', img);
    const one = (performance.now() - s) / 20;
    console.log(size >> 20, 'MiB: sync', sync.toFixed(2), 'subtle issue', issue.toFixed(3), 'wall/each (4 threads)', wall.toFixed(2), 'one at a time', one.toFixed(2));
  }
}
