import type { Redis } from 'ioredis';
import { channelName } from '../storage/redis-channels.js';
import type { ProgressEvent } from '../generation/generation-events.js';
import type { ImageResult } from '../generation/image-generation.js';
import type { Logger } from '../observability/logger.js';

/**
 * What a replica running a job tells those following it: its progress events as they happen, then
 * `finished` once the outcome is written (followers read the outcome from the job store).
 */
export type JobNotice =
  | Exclude<ProgressEvent, { type: 'image' }>
  /** From another replica, a base64 image comes without its bytes (`b64_in_store`): they are read back from the image store. */
  | { type: 'image'; index: number; image: ImageResult; b64_in_store?: true }
  | { type: 'finished' };

type Listener = (notice: JobNotice) => void;

/** One channel for every job: notices are small and few, and a replica subscribes once. */
const CHANNEL = 'job-events';

interface Envelope {
  /** The replica that published it, which has already told its own listeners. */
  from: string;
  job: string;
  notice: JobNotice;
}

/**
 * Job notices between the replica that runs a job and whoever follows it: in this process
 * directly, and to the other replicas through Redis pub/sub where REDIS_URL is set. Without Redis
 * (or while it is down) followers on other replicas learn a job's state from the job store instead;
 * see JobRunner.follow.
 */
export class JobEventBus {
  private readonly listeners = new Map<string, Set<Listener>>();
  private subscriber: Redis | undefined;
  /** The subscription has been made; ioredis makes it again after each reconnection. */
  private subscribed = false;

  constructor(
    /** This replica's name in job notices, and the job runner's in job leases. */
    readonly replicaId: string,
    private readonly log: Logger,
    private readonly publisher?: Redis,
  ) {}

  /** Whether notices from other replicas arrive: they do through a connected Redis subscription. */
  get sharedAcrossReplicas(): boolean {
    return this.subscribed && this.subscriber?.status === 'ready';
  }

  async start(): Promise<void> {
    if (!this.publisher) return;
    // A connection in subscriber mode can do nothing else: this one is the bus's own.
    // Its commands wait for Redis however long it is down (no retry limit), in the offline queue.
    // Subscribed again here on each reconnection, not by ioredis (autoResubscribe), which leaves its
    // SUBSCRIBE's promise unobserved: a connection dropped again at once was an unhandled rejection.
    const subscriber = this.publisher.duplicate({ lazyConnect: true, enableOfflineQueue: true, maxRetriesPerRequest: null, autoResubscribe: false });
    subscriber.on('error', () => {}); // ioredis reconnects; followers read the job store meanwhile.
    subscriber.on('message', (_channel: string, message: string) => this.receive(message));
    this.subscriber = subscriber;
    const subscribe = () =>
      subscriber.subscribe(channelName(subscriber, CHANNEL)).then(
        () => (this.subscribed = true),
        (err: unknown) => {
          if (this.subscriber === subscriber && subscriber.status === 'ready') this.log.warn({ err }, 'job events could not be subscribed to in redis: other replicas’ job events are read from the job store');
        },
      );
    // On every connection (again at the first: SUBSCRIBE to a channel already subscribed is a no-op).
    subscriber.on('ready', () => void subscribe());
    // Not awaited (the command connects): with Redis down at start, the subscription waits and is
    // made once Redis answers; meanwhile followers read the job store.
    void subscribe();
  }

  async close(): Promise<void> {
    const subscriber = this.subscriber;
    this.subscriber = undefined;
    subscriber?.disconnect();
    this.listeners.clear();
  }

  /** Calls `listener` with each notice about job `jobId` until the returned function is called. */
  listen(jobId: string, listener: Listener): () => void {
    let set = this.listeners.get(jobId);
    if (!set) this.listeners.set(jobId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.listeners.get(jobId) === set) this.listeners.delete(jobId);
    };
  }

  publish(jobId: string, notice: JobNotice): void {
    this.deliver(jobId, notice);
    if (!this.publisher || this.publisher.status !== 'ready') return;
    // Image bytes stay out of Redis: previews are this replica's own, and a follower elsewhere reads
    // a base64 image back from the image store.
    if (notice.type === 'partial_image') return;
    let shared = notice;
    // An image answered only inline (storage full: no URL) has no stored copy to read back; its bytes go along.
    if (notice.type === 'image' && notice.image.b64_json !== undefined && notice.image.url !== undefined) {
      const { b64_json: _bytes, ...image } = notice.image;
      shared = { ...notice, image, b64_in_store: true };
    }
    const envelope: Envelope = { from: this.replicaId, job: jobId, notice: shared };
    this.publisher.publish(channelName(this.publisher, CHANNEL), JSON.stringify(envelope)).catch((err) => this.log.debug({ err, job_id: jobId }, 'a job notice was not shared through redis'));
  }

  private receive(message: string): void {
    let envelope: Envelope;
    try {
      envelope = JSON.parse(message) as Envelope;
    } catch {
      return;
    }
    if (envelope.from === this.replicaId || typeof envelope.job !== 'string') return;
    this.deliver(envelope.job, envelope.notice);
  }

  private deliver(jobId: string, notice: JobNotice): void {
    const set = this.listeners.get(jobId);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(notice);
      } catch (err) {
        this.log.error({ err, job_id: jobId }, 'a job event listener failed');
      }
    }
  }
}
