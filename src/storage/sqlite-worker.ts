// The SQLite thread behind SqliteDatabase: its own connection to the gateway's SQLite file, running
// the statements sent to it one at a time, in order. Node loads this file on its own (as .js from
// dist/, or as .ts with the types stripped under the tests): node: imports only.
import type { SQLInputValue } from 'node:sqlite';
import { parentPort, workerData } from 'node:worker_threads';
import type { SqliteBatchStatement, SqliteConnection } from './sqlite-connection.js';

/**
 * What SqliteDatabase sends: one statement, or the end. `begin`: open the transaction (BEGIN
 * IMMEDIATE) first, in the same trip; if that fails the statement is not run.
 */
export type SqliteRequest =
  | { id: number; op: 'run' | 'all' | 'get'; sql: string; params: SQLInputValue[]; begin?: true }
  | { id: number; op: 'exec'; sql: string }
  | { id: number; op: 'batch'; statements: SqliteBatchStatement[] }
  | { id: number; op: 'close' };

/** What it hears back: the statement's result, or its error's own words and codes. */
export type SqliteReply = { id: number; result: unknown } | { id: number; error: { message: string; code?: string; errcode?: number; errstr?: string } };

const { path, autocheckpointPages } = workerData as { path: string; autocheckpointPages: number };
// Its sibling module, with the extension this file was loaded with.
const { SqliteConnection: Connection } = (await import(import.meta.url.endsWith('.ts') ? './sqlite-connection.ts' : './sqlite-connection.js')) as {
  SqliteConnection: typeof SqliteConnection;
};

// A file this thread cannot open ends it (an uncaught error): SqliteDatabase then hears the thread
// is lost and runs every statement on the event loop's own connection.
const db = new Connection(path, autocheckpointPages);

const BEGIN = 'BEGIN IMMEDIATE';

function perform(request: SqliteRequest): unknown {
  if ('begin' in request && request.begin) db.exec(BEGIN);
  switch (request.op) {
    case 'run':
      return db.run(request.sql, request.params);
    case 'all':
      return db.all(request.sql, request.params);
    case 'get':
      return db.get(request.sql, request.params);
    case 'exec':
      return db.exec(request.sql);
    case 'batch':
      return db.batch(request.statements);
    case 'close':
      return db.close();
  }
}

parentPort!.on('message', (request: SqliteRequest) => {
  let reply: SqliteReply;
  try {
    reply = { id: request.id, result: perform(request) };
  } catch (err) {
    const e = err as { message?: string; code?: string; errcode?: number; errstr?: string };
    reply = { id: request.id, error: { message: String(e?.message ?? err), code: e?.code, errcode: e?.errcode, errstr: e?.errstr } };
  }
  parentPort!.postMessage(reply);
  if (request.op === 'close') parentPort!.close();
});
