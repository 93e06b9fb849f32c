/**
 * Reading `text/event-stream` answers in tests, as a client does: blocks separated by a blank line,
 * `event:` and `data:` lines, and `:` comments (keep-alives), each kept in arrival order.
 */
export interface SseBlock {
  event?: string;
  data?: string;
  comment?: string;
}

/** The event blocks of a stream body, in order. */
export function parseSse(body: string): SseBlock[] {
  return body
    .split('\n\n')
    .filter((block) => block.trim() !== '')
    .map((block) => {
      const parsed: SseBlock = {};
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) parsed.comment = line.slice(1).trim();
        else if (line.startsWith('event: ')) parsed.event = line.slice('event: '.length);
        else if (line.startsWith('data: ')) parsed.data = (parsed.data === undefined ? '' : `${parsed.data}\n`) + line.slice('data: '.length);
      }
      return parsed;
    });
}

/** Named events only (no comments), with their data parsed as JSON. */
export function eventsOf(blocks: SseBlock[]): Array<{ event: string; data: any }> {
  return blocks.filter((b) => b.event !== undefined).map((b) => ({ event: b.event!, data: b.data === undefined ? undefined : JSON.parse(b.data) }));
}

/**
 * Reads a streamed answer block by block as it arrives, calling `onBlock` for each, until the
 * stream ends; answers every block read.
 */
export async function readStream(res: { body: unknown }, onBlock: (block: SseBlock) => void | Promise<void> = () => {}): Promise<SseBlock[]> {
  const blocks: SseBlock[] = [];
  const decoder = new TextDecoder();
  let pending = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    pending += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = pending.indexOf('\n\n')) >= 0) {
      const [block] = parseSse(pending.slice(0, end + 2));
      pending = pending.slice(end + 2);
      if (!block) continue;
      blocks.push(block);
      await onBlock(block);
    }
  }
  return blocks;
}
