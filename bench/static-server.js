// The baseline for serving stored images: @fastify/static over the gateway's own image directory.
import Fastify from 'fastify';
import fastifyStatic from '@fastify/static';
import { reportReady } from './child-process.js';

const app = Fastify({ logger: false });
await app.register(fastifyStatic, { root: process.env.BENCH_STATIC_ROOT });
await app.listen({ port: 0, host: '127.0.0.1' });
reportReady(app.server.address().port, () => app.close());
