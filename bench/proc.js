// What a target costs the machine, read from Linux's /proc: CPU time and peak resident memory of
// its whole process tree (a worker pool's threads are in the process's own figures; a design with
// several processes has children, which count too). Elsewhere every figure is null.
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100;

/** One /proc/<pid>/stat line: its parent, and CPU ms of the process (all threads) and its reaped children. */
export function parseStat(line) {
  // The command name (field 2) may hold spaces and parentheses: the fields after it start past the last ')'.
  const fields = line.slice(line.lastIndexOf(')') + 2).split(' ');
  const ticks = (i) => Number(fields[i]);
  return {
    ppid: ticks(1),
    // utime + stime, and cutime + cstime: a child that exited and was waited for moves its time there.
    cpuMs: ((ticks(11) + ticks(12) + ticks(13) + ticks(14)) * 1000) / TICKS_PER_SECOND,
  };
}

/** `root` and its descendants, given every process's parent. */
export function treeOf(root, parents) {
  const children = new Map();
  for (const [pid, ppid] of parents) {
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(pid);
  }
  const tree = [];
  const pending = [root];
  while (pending.length) {
    const pid = pending.pop();
    tree.push(pid);
    pending.push(...(children.get(pid) ?? []));
  }
  return tree;
}

function readStats() {
  const stats = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      stats.set(Number(entry), parseStat(readFileSync(`/proc/${entry}/stat`, 'utf8')));
    } catch {
      // Gone between the listing and the read.
    }
  }
  return stats;
}

function processTree(root) {
  const stats = readStats();
  if (!stats.has(root)) return null;
  return treeOf(root, [...stats].map(([pid, s]) => [pid, s.ppid])).map((pid) => ({ pid, cpuMs: stats.get(pid).cpuMs }));
}

/** CPU ms used so far by `root`'s process tree; null where /proc cannot tell. */
export function treeCpuMs(root) {
  try {
    const tree = processTree(root);
    return tree ? tree.reduce((sum, p) => sum + p.cpuMs, 0) : null;
  } catch {
    return null;
  }
}

/** Cores in use over a span: CPU time over wall time (2.0: two cores busy throughout). */
export function coresUsed(cpuMsBefore, cpuMsAfter, wallMs) {
  if (cpuMsBefore === null || cpuMsAfter === null || !(wallMs > 0)) return null;
  return (cpuMsAfter - cpuMsBefore) / wallMs;
}

/** Peak resident memory (VmHWM) of a process tree, reset through clear_refs and summed over its processes. */
export const treeMemory = {
  reset(root) {
    try {
      for (const { pid } of processTree(root) ?? []) writeFileSync(`/proc/${pid}/clear_refs`, '5');
    } catch {
      // Not Linux, or not allowed: the peak is then each process's lifetime peak.
    }
  },
  peakMb(root) {
    try {
      const tree = processTree(root);
      if (!tree) return null;
      let kb = 0;
      for (const { pid } of tree) kb += Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
      return Math.round(kb / 1024);
    } catch {
      return null;
    }
  },
};
