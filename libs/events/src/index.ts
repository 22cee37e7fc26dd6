export * from './envelope.ts';
export * from './publisher.ts';
export * from './reader.ts';
export * from './signature.ts';
export { natsConnectTarget, redactNatsUrl, type NatsConnectTarget } from './nats-url.ts';
export { ensureEventStream, EVENT_DUPLICATE_WINDOW_MS, EVENT_STREAM_SUBJECTS } from './stream.ts';
export { ReleaseEvents, createReleaseEvent, keySigner, type ReleaseEventData, type ReleaseEventInput, type ReleaseEventsOptions } from './release.ts';
export { openObjectStore, type ObjectStoreHandle } from './object-store.ts';
