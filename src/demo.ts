// First: SIGHUP must not end the process while the rest loads.
import './hangup-guard.js';
import { randomBytes } from 'node:crypto';
import { loadConfig, type Config } from './config.js';
import { serve, startupProblem } from './server.js';
import { startUpstreamSimulator } from './simulator/upstream-simulator.js';

/**
 * `npm run demo`: the gateway in front of the built-in upstream simulator, so frontends can be built
 * and tried without an upstream key or spending money.
 */
let demoConfig: Config | undefined;

/** What of the demo's state each shared service takes. */
const SHARED_STATE: Readonly<Record<string, string>> = {
  DATABASE_URL: 'its jobs, usage, image records and minted keys',
  REDIS_URL: 'its limit counters and key changes',
  S3_BUCKET: 'its images',
};

async function main(): Promise<void> {
  const simulatorKey = `sim-${randomBytes(12).toString('hex')}`;
  // Async tasks take a few seconds, so a client can watch their progress.
  const simulator = await startUpstreamSimulator({ apiKey: simulatorKey, taskReadyAfterMs: 4000, distinctImages: true });
  const env: NodeJS.ProcessEnv = { ...process.env, AIHUBMIX_BASE_URL: simulator.url, AIHUBMIX_API_KEY: simulatorKey };
  let demoKey: string | undefined;
  // GATEWAY_KEYS_FILE's keys work beside it: the printed curl must work as it is.
  if (!env.GATEWAY_API_KEYS) {
    demoKey = `gk-demo-${randomBytes(16).toString('hex')}`;
    env.GATEWAY_API_KEYS = `demo:${demoKey}`;
  }
  // The console's Keys and Usage pages need the operator's key: made here, so they can be tried too.
  let demoAdminKey: string | undefined;
  if (!env.GATEWAY_ADMIN_KEY?.trim()) {
    demoAdminKey = `ga-demo-${randomBytes(16).toString('hex')}`;
    env.GATEWAY_ADMIN_KEY = demoAdminKey;
  }
  // Never the real gateway's state unless asked: demo keys, jobs and images must not carry over to
  // npm start. An empty DATA_DIR counts as unset (the gateway would read it as its own ./data).
  const dataDirGiven = Boolean(env.DATA_DIR?.trim());
  if (!dataDirGiven) env.DATA_DIR = './data-demo';
  const config = loadConfig(env);
  demoConfig = config;
  await serve(config, { onClose: () => simulator.close() });
  const everywhere = config.HOST === '0.0.0.0' || config.HOST === '::';
  const shown = everywhere ? 'localhost' : config.HOST;
  const url = `http://${shown}:${config.PORT}`;
  const key = demoKey ?? '<one of your GATEWAY_API_KEYS>';
  // The variables still apply (a demo can be tried against real services): say where its state goes then.
  const shared = ['DATABASE_URL', 'REDIS_URL', 'S3_BUCKET'].filter((name) => env[name]?.trim());
  console.log(`
Image gateway demo (upstream: built-in simulator at ${simulator.url})
  URL:        ${url}${everywhere ? `   (every interface, as the gateway's HOST default; HOST=127.0.0.1 keeps it to this machine)` : ''}
  client key: ${key}${demoKey ? '   (made for this demo run)' : ''}
  admin key:  ${demoAdminKey ?? 'GATEWAY_ADMIN_KEY as set'}   (${demoAdminKey ? 'made for this demo run: ' : ''}manages keys, reads every key's usage)
  console:    ${url}/console/ (sign in with the client key, or the admin key for every team's usage and keys)
  docs:       ${url}/docs
  state:      ${config.DATA_DIR} (${
    dataDirGiven
      ? "DATA_DIR as set: shared with npm start or anything else using it; unset for the demo's own ./data-demo"
      : "the demo's own, kept apart from the real gateway's DATA_DIR"
  })${
    shared.length > 0 ? `\n  shared:     ${shared.map((name) => `${name} set: ${SHARED_STATE[name]} go there`).join('; ')}; unset to keep them apart` : ''
  }${
    // Its simulator's tasks live in this process: a gateway sharing its jobs cannot carry them on.
    dataDirGiven || env.DATABASE_URL?.trim()
      ? `\n  replicas:   each demo has a simulator of its own: a demo job left unfinished is taken over by the gateways sharing its jobs, and fails there (keep demos off a production database); for replicas, run one with npm run simulator and npm start each against it`
      : ''
  }

Try:
  curl -s ${url}/v1/generate -H 'Authorization: Bearer ${key}' -H 'Content-Type: application/json' \\
    -d '{"model":"gpt-image-1","prompt":"A deer drinking in the lake"}'
`);
}

main().catch((err) => {
  const problem = startupProblem(err, demoConfig);
  console.error(problem ?? err);
  process.exit(problem ? 2 : 1);
});
