export { createApp, type ReceiverDeps } from './app.ts';
export { loadReceiverConfig, type ReceiverConfig } from './config.ts';
export { Deployer, configHash, type DeployerDeps } from './deploy/engine.ts';
export { startReceiver, runReceiver, VERSION, type RunningReceiver } from './main.ts';
