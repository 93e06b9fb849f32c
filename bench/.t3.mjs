import { randomBytes } from 'node:crypto';
const b64 = Buffer.from(randomBytes(49152).toString('base64'), 'latin1');
const A = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_') A[c.charCodeAt(0)] = 1;
function loop(p) { for (let i = 0; i < p.length; i++) if (A[p[i]] === 0) return false; return true; }
const re = /[^A-Za-z0-9+/=_-]/;
function regex(p) { return !re.test(p.toString('latin1')); }
function decodeCount(p) { const s = p.toString('latin1'); return Buffer.byteLength(s, 'base64'); }
const t = (name, fn, n = 2000) => { fn(b64); const s = performance.now(); let ok; for (let i = 0; i < n; i++) ok = fn(b64); console.log(name, ((performance.now() - s) / n * 1000).toFixed(1), 'us', ok); };
t('loop', loop); t('regex', regex); t('loop', loop); t('regex', regex);
