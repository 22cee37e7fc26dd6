export * from './errors.ts';
export * from './wire.ts';
export * from './manifest.ts';
export * from './deployment.ts';
export * from './events.ts';
export { configHash } from './config-hash.ts';
export * from './layers.ts';
export * from './selector.ts';
