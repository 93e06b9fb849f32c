// The small protocol between bench/run.js and the servers it forks: a child says where it
// listens, and stops when told to (so a --cpu-prof profile is written on a clean exit).

/** Tells the parent the child is listening on `port`, and closes with `close()` when asked. */
export function reportReady(port, close) {
  process.send({ type: 'ready', port });
  process.on('message', async (message) => {
    if (message?.type !== 'close') return;
    try {
      await close();
    } finally {
      process.exit(0);
    }
  });
  // An orphaned child (the runner died) must not keep the machine busy.
  process.on('disconnect', () => process.exit(0));
}
