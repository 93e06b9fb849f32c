import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { Agent } from 'undici';
import { egressLookup, egressRefusal } from '../images/image-fetch.js';
import type { JobRunnerOptions } from './job-runner.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** How jobs call their callback URLs: signed, under the egress policy, over connections of their own. */
    jobCallbacks: Required<Pick<JobRunnerOptions, 'callbackSecret' | 'callbackRefusal' | 'callbackDispatcher'>>;
  }
}

async function jobCallbacks(app: FastifyInstance): Promise<void> {
  const config = app.config;
  const allowed = new Set(config.ALLOWED_CALLBACK_HOSTS);
  const callbackDispatcher = new Agent({ connect: { lookup: egressLookup(allowed, app.resolveHost) } });
  app.decorate('jobCallbacks', {
    callbackSecret: config.CALLBACK_SECRET ? Buffer.from(config.CALLBACK_SECRET, 'utf8') : app.signer.derivedKey('job callbacks'),
    // Callbacks go to caller-given URLs: the same egress policy as image URLs.
    callbackRefusal: (url) => egressRefusal(url, allowed, app.resolveHost),
    callbackDispatcher,
  });
  app.addHook('onClose', async () => callbackDispatcher.close());
}

/** What job callbacks are signed with and sent through. */
export const jobCallbacksPlugin = fp(jobCallbacks, { name: 'job-callbacks', dependencies: ['url-signer'] });
