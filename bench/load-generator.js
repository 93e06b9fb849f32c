// The load generator in a process of its own (forked by bench/run.js), so that autocannon's CPU
// never competes with the orchestrator's bookkeeping: it runs one measurement (bench/measure.js)
// per message and sends its result back.
import { measure } from './measure.js';

process.on('message', async (message) => {
  if (message?.type !== 'measure') return;
  try {
    process.send({ type: 'result', id: message.id, result: await measure(message.options) });
  } catch (err) {
    process.send({ type: 'result', id: message.id, error: String(err?.stack ?? err) });
  }
});
// An orphaned load generator (the runner died) must not keep loading the machine.
process.on('disconnect', () => process.exit(0));
process.send({ type: 'ready' });
