import type * as Nats from 'nats';

let loading: Promise<typeof Nats> | undefined;

/**
 * nats.js, loaded on first use. Importing it costs about 0.1 s, and most commands that carry
 * @ferry/events never open a connection (`ferry push` without FERRY_NATS_URL), so the code that
 * connects loads it; everything after a connection finds it loaded.
 */
export function loadNats(): Promise<typeof Nats> {
  loading ??= import('nats');
  return loading;
}
