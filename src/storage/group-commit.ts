import type { SpanContext } from '@opentelemetry/api';
import { inSpan } from '../observability/tracing.js';
import type { BatchResult, BatchStatement, Database } from './database.js';

/** One repository's part of a group commit: its statements, and what it hears after. */
export interface CommitShare {
  statements: BatchStatement[];
  /** Its statements' results, once the group is committed. */
  committed(results: BatchResult[]): void;
  /** The group failed, or this share did on its own: none of its statements is kept. */
  failed(err: unknown): void;
  /** The spans of the requests whose writes it carries (while traces are on): the commit's span links to each. */
  spans?: SpanContext[];
  /** Counted on the commit's span, e.g. `gateway.usage.records`. */
  count?: { attribute: string; value: number };
}

/** A repository whose writes wait for the next group commit. */
export interface CommitSource {
  /** What it has to write now, if anything: asked once for each group as the group is formed. */
  take(): CommitShare | undefined;
}

/**
 * One commit for the writes of many requests and several repositories (image rows, their owners,
 * usage records): what is queued in the same turn of the event loop, or while a commit is in
 * flight, goes in the next one, as one batch. Each commit to SQLite's log costs a small image
 * more CPU than anything else (bench/README.md), and each request needs two (its image rows
 * before its answer is built, its usage record as it leaves): under load, many share them.
 * A group that fails is tried again share by share, so one repository's fault (a constraint, a
 * full disk) is told to it alone and the others' writes still land.
 */
export class GroupCommit {
  private readonly sources: CommitSource[] = [];
  private scheduled = false;
  /** The commit in flight, while one is. */
  private running: Promise<void> | undefined;
  /** Something was queued while a commit was in flight: the next one follows it at once. */
  private again = false;

  /** `onFault`: told of a repository's own fault in its part (a throw from take, committed or failed); the others go on. */
  constructor(
    private readonly db: Database,
    private readonly onFault: (err: unknown) => void = () => {},
  ) {}

  register(source: CommitSource): void {
    this.sources.push(source);
  }

  /** Writes are waiting: a commit starts in the next turn of the event loop, or after the one in flight. */
  wake(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    // The next turn: writes queued in this one go in the same commit.
    setImmediate(() => {
      this.scheduled = false;
      if (this.running) this.again = true;
      else this.start();
    });
  }

  /** Commits what is waiting now (not in the next turn); resolves once nothing is waiting or in flight. */
  async flush(): Promise<void> {
    if (this.running) this.again = true;
    else this.start();
    while (this.running) await this.running;
  }

  private start(): void {
    // Running from here on: a wake() from a source's take() (more than one group's worth waiting)
    // sets `again` instead of waiting for a turn that may come while this commit is in flight.
    const running = Promise.resolve()
      .then(() => this.commitWaiting())
      .catch((err: unknown) => this.fault(err))
      .finally(() => {
        this.running = undefined;
        if (!this.again) return;
        this.again = false;
        this.start();
      });
    this.running = running;
  }

  private async commitWaiting(): Promise<void> {
    const shares: CommitShare[] = [];
    for (const source of this.sources) {
      let share: CommitShare | undefined;
      try {
        share = source.take();
      } catch (err) {
        this.fault(err);
      }
      if (share) shares.push(share);
    }
    if (shares.length === 0) return;
    let results: BatchResult[] | undefined;
    try {
      results = await this.commit(shares);
    } catch (err) {
      if (shares.length === 1) return this.tell(() => shares[0]!.failed(err));
    }
    if (results) {
      let at = 0;
      for (const share of shares) {
        const mine = results.slice(at, (at += share.statements.length));
        this.tell(() => share.committed(mine));
      }
      return;
    }
    // Share by share: only the one at fault hears of it.
    for (const share of shares) {
      let results: BatchResult[];
      try {
        results = await this.commit([share]);
      } catch (err) {
        this.tell(() => share.failed(err));
        continue;
      }
      this.tell(() => share.committed(results));
    }
  }

  /** Tells a share how its commit went: a fault of its own does not keep the others from hearing. */
  private tell(hear: () => void): void {
    try {
      hear();
    } catch (err) {
      this.fault(err);
    }
  }

  private fault(err: unknown): void {
    try {
      this.onFault(err);
    } catch {
      // Nothing more to tell.
    }
  }

  private commit(shares: CommitShare[]): Promise<BatchResult[]> {
    const statements = shares.length === 1 ? shares[0]!.statements : shares.flatMap((s) => s.statements);
    const spans = shares.flatMap((s) => s.spans ?? []);
    const attributes: Record<string, number | string> = { 'db.operation.name': 'COMMIT', 'gateway.db.statements': statements.length };
    for (const { count } of shares) if (count) attributes[count.attribute] = (Number(attributes[count.attribute]) || 0) + count.value;
    // One commit serves many requests: its span is under the first one's and links to each.
    return inSpan('db.commit', attributes, () => this.db.batch(statements), spans.length > 0 ? { parent: spans[0], links: spans.map((context) => ({ context })) } : {});
  }
}
