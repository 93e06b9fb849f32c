// The small protocol between bench/run.js and the servers it forks: a child says where it
// listens, and stops when told to (so a --cpu-prof profile is written on a clean exit).

/** Tells the parent the child is listening on `port`, and closes with `close()` when asked. */
export function reportReady(port, close) {
  process.send({ type: 'ready', port });
  process.on('message', async (message) => {
    // Where the memory is, for looking into a peak: V8's heap, buffers, or the rest of the process.
    if (message?.type === 'memory') return process.send({ type: 'memory', usage: process.memoryUsage() });
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
