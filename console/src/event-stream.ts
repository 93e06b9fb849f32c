/**
 * Reads a `text/event-stream` body as it arrives (fetch + ReadableStream: EventSource cannot POST).
 * Pure: feed it the decoded text in whatever pieces the network gives.
 */

export interface StreamEvent {
  event: string;
  data: string;
}

export class EventStreamParser {
  private buffer = '';
  private event = '';
  private data: string[] = [];

  /** The events completed by this piece of text. */
  push(text: string): StreamEvent[] {
    this.buffer += text;
    const out: StreamEvent[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (!match || (match[0] === '\r' && match.index === this.buffer.length - 1)) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      if (line === '') {
        if (this.data.length > 0) out.push({ event: this.event || 'message', data: this.data.join('\n') });
        this.event = '';
        this.data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.event = value;
      else if (field === 'data') this.data.push(value);
    }
    return out;
  }
}

/** Each event of a streamed answer as it comes, from a fetch Response's body. */
export async function* readEventStream(body: ReadableStream<Uint8Array>): AsyncGenerator<StreamEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new EventStreamParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    yield* parser.push(decoder.decode() + '\n\n');
  } finally {
    reader.releaseLock();
  }
}

/** The progress a stream event tells, in words. */
export function progressText(event: string, data: Record<string, unknown>): string | undefined {
  if (event === 'queued') return 'Queued…';
  if (event === 'running') return data.task_id ? 'Running (upstream task accepted)…' : 'Running…';
  if (event === 'progress') {
    // Upstream's progress is a fraction, 0 to 1 (openapi.yaml's ProgressEvent): shown as a percentage, 0 to 100.
    // A percentage says more than upstream's word for the state, which may still be "Pending" at 60 %.
    if (typeof data.progress === 'number' && Number.isFinite(data.progress)) return `Running: ${Math.round(Math.min(1, Math.max(0, data.progress)) * 100)}%…`;
    return `Running: ${String(data.upstream_status ?? 'in progress')}…`;
  }
  return undefined;
}
