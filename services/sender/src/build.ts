import type { ImageBuilder, ImageStore } from '@ferry/docker';
import { createEvent, type EventSink } from '@ferry/events';
import { FerryError } from '@ferry/protocol';
import type { PushRequest } from './push.ts';

/** Images larger than this are not worth shipping as one package by default. */
export const DEFAULT_MAX_IMAGE_SIZE = 2 * 1024 ** 3;

export interface BuildRequest {
  context: string;
  /** `name[:tag]` of the result. */
  tag: string;
  dockerfile?: string;
  buildArgs?: Record<string, string>;
  /** Refuse a result larger than this many bytes; default DEFAULT_MAX_IMAGE_SIZE. */
  maxImageSize?: number;
  signal?: AbortSignal;
}

export interface BuildDeps {
  builder: ImageBuilder;
  images: ImageStore;
  onLog?: (line: string) => void;
}

export interface BuildResult {
  image: string;
  imageId: string;
  /** The image's size as the engine reports it (uncompressed layers). */
  bytes: number;
  durationMs: number;
}

/**
 * `ferry build`: build on the build engine, then refuse the result with FERRY_ERR_IMAGE_TOO_LARGE
 * when it exceeds the size gate. The oversized image is left on the engine, tagged, so that its
 * owner can look at what made it large.
 */
export async function buildImage(request: BuildRequest, deps: BuildDeps): Promise<BuildResult> {
  const started = performance.now();
  const imageId = await deps.builder.build({
    context: request.context, tag: request.tag,
    ...(request.dockerfile ? { dockerfile: request.dockerfile } : {}),
    ...(request.buildArgs ? { buildArgs: request.buildArgs } : {}),
    ...(request.signal ? { signal: request.signal } : {}),
  }, deps.onLog);
  const info = await deps.images.inspect(imageId);
  if (!info) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `The image just built as ${request.tag} (${imageId}) is gone`, details: { ref: request.tag } });
  const limit = request.maxImageSize ?? DEFAULT_MAX_IMAGE_SIZE;
  if (info.size > limit) {
    throw new FerryError('FERRY_ERR_IMAGE_TOO_LARGE', {
      message: `${request.tag} is ${info.size} bytes, more than the limit of ${limit} bytes (--max-image-size)`,
      details: { image: request.tag, imageId, size: info.size, limit },
    });
  }
  return { image: request.tag, imageId, bytes: info.size, durationMs: Math.round(performance.now() - started) };
}

export interface BuildStepDeps extends BuildDeps {
  events: EventSink;
  /** CloudEvents source of the sender. */
  source: string;
  /** The service the push deploys: the subject of the build's events. */
  service: string;
}

/**
 * The `prepare` step of `ferry push --build`: builds the image the push then sends, and reports
 * build.started / build.completed under the push's deployment id so that watchers see one story.
 * A failed build ends the push before anything is packaged; its error names the deployment.
 */
export function buildBeforePush(request: BuildRequest, deps: BuildStepDeps): NonNullable<PushRequest['prepare']> {
  return async ({ deploymentId, host }) => {
    const correlation = { source: deps.source, host, service: deps.service, deploymentId };
    deps.events.publish(createEvent('build.started', {
      ...correlation,
      data: { image: request.tag, context: request.context, ...(request.dockerfile ? { dockerfile: request.dockerfile } : {}) },
    }));
    let result: BuildResult;
    try {
      result = await buildImage(request, deps);
    } catch (err) {
      throw err instanceof FerryError ? err.withDetails({ deploymentId, host }) : err;
    }
    deps.events.publish(createEvent('build.completed', {
      ...correlation,
      data: { image: result.image, imageId: result.imageId, bytes: result.bytes, durationMs: result.durationMs },
    }));
  };
}
