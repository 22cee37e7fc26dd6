export { createDockerClient } from './client.ts';
export {
  DockerEngine,
  EngineError,
  encodeQuery,
  namePath,
  type ContainerCreateBody,
  type ContainerInspect,
  type ContainerSummary,
  type EngineAddress,
  type EngineInfo,
  type EngineVersion,
  type HealthInspect,
  type HostConfig,
  type ImageInspect,
  type ImageSummary,
  type JsonRequest,
  type Query,
  type QueryValue,
  type StreamRequest,
} from './engine.ts';
export { ImageStore, type ImageInfo, type LoadResult, type RemoveImageOptions } from './image-store.ts';
export {
  ContainerRunner,
  type ContainerHealth,
  type ContainerInfo,
  type ContainerSpec,
  type DeviceSpec,
  type HealthcheckTimings,
  type MountSpec,
  type PortBinding,
  type PublishedPort,
  publishedPort,
  type NetworkMode,
  type RemoveContainerOptions,
  type RestartPolicy,
} from './container-runner.ts';
export {
  MAX_LINE_LENGTH,
  ProgressParser,
  parseProgressLine,
  readProgress,
  type JsonMessage,
  type ProgressEvent,
} from './progress.ts';
export { LayerStore, LayerStoreUnreadable, type StoredLayer } from './layer-store.ts';
export { splitReference, type ReferenceParts } from './reference.ts';
export { splitLogLines } from './logs.ts';
export { ImageBuilder, type BuildLogSink, type BuildOptions } from './image-builder.ts';
export { isUnreachable, statusOf, toFerryError } from './errors.ts';
export {
  BLOCK,
  TYPE,
  fileEntry,
  paddedSize,
  parsePax,
  readHeader,
  readString,
  writeHeader,
  type HeaderResult,
  type RawHeader,
} from './tar.ts';
