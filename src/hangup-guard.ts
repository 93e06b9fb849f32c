/**
 * Imported first by the entry points (server.ts, demo.ts), so that it runs before the rest of the
 * gateway loads: from then on SIGHUP never ends the process, which is Node's default for it. Tooling
 * sends SIGHUP to reload files, and a start that is slow (a database, Redis) would otherwise die of
 * one. Once built, the app's own handler (src/app.ts) reloads the files; this one does nothing.
 */
process.on('SIGHUP', () => {});
