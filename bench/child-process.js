// The small protocol between bench/run.js and the servers it forks: a child says where it
// listens, profiles its main thread when asked, and stops when told to.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';

let profiler;

async function startProfile() {
  profiler = new Session();
  profiler.connect();
  await profiler.post('Profiler.enable');
  await profiler.post('Profiler.start');
  process.send({ type: 'profile-started' });
}

async function stopProfile(path) {
  const { profile } = await profiler.post('Profiler.stop');
  profiler.disconnect();
  writeFileSync(path, JSON.stringify(profile));
  process.send({ type: 'profile-written', path });
}

/** Tells the parent the child is listening on `port`, and closes with `close()` when asked. */
export function reportReady(port, close) {
  process.send({ type: 'ready', port });
  process.on('message', async (message) => {
    // Where the memory is, for looking into a peak: V8's heap, buffers, or the rest of the process.
    if (message?.type === 'memory') return process.send({ type: 'memory', usage: process.memoryUsage() });
    // A CPU profile of the main thread over the measurements only (BENCH_PROFILE), without startup and warm-up.
    if (message?.type === 'profile-start') return startProfile();
    if (message?.type === 'profile-stop') return stopProfile(message.path);
    if (message?.type !== 'close') return;
    // A close that waits on connections the load left behind must not hold up the run.
    setTimeout(() => process.exit(0), 3000).unref();
    try {
      await close();
    } finally {
      process.exit(0);
    }
  });
  // An orphaned child (the runner died) must not keep the machine busy.
  process.on('disconnect', () => process.exit(0));
}
