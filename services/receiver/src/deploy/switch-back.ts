import type { ContainerInfo, ContainerRunner, ImageStore } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import type { Proxy } from '@ferry/proxy';
import { FerryError, type DeploymentResult, type DeploymentState, type RouteLabel, type StageTimings } from '@ferry/protocol';
import type { Journal } from '../journal/journal.ts';
import type { CrashPoint } from './crash.ts';
import { Scrubber } from './failure.ts';
import { asFerryError, failure, since } from './outcome.ts';
import { SwitchIncomplete, abandonSwitch, checkRouted, commitSwitch, switchFacts, upstreamOf } from './start-first.ts';
import type { Emit } from './verdict.ts';

export interface SwitchBackDeps {
  containers: ContainerRunner;
  images: ImageStore;
  proxy: Proxy;
  journal: Journal;
  hostId: string;
  logger: Logger;
  stabilityWindowMs?: number | undefined;
  crashAt?: CrashPoint | undefined;
  emit: Emit;
}

export interface SwitchBack {
  subject: { deploymentId: string; service: string; image: string; imageId: string };
  /** The kept previous container, stopped, under the previous name. */
  previous: ContainerInfo;
  /** What serves now, under the service's name; none when nothing runs. */
  current: ContainerInfo | undefined;
  /** The previous container's route, drain and check (its `ferry.route` label). */
  label: RouteLabel;
}

/**
 * Manual rollback (`POST /v1/services/:name/rollback`) of a start-first service, itself a
 * start-first switch back: the kept previous container starts beside the current one, passes
 * its check (through its published port) and the stability window, then the proxy sends it the
 * requests, the current one drains, stops and is kept as the previous one — a second rollback
 * rolls forward the same way. If the previous container does not pass, it is stopped again and
 * the current one never stopped. Journalled as a record of kind `rollback` with its switch
 * (recovered as start-first.ts says). The caller holds the service's lock.
 */
export async function rollbackStartFirst(deps: SwitchBackDeps, back: SwitchBack): Promise<DeploymentResult> {
  const { containers, images, proxy, emit } = deps;
  const { subject, previous, current, label } = back;
  const { service, deploymentId } = subject;
  const log = deps.logger.child({ deploymentId, service });
  const started = performance.now();
  const timings: StageTimings = {};
  const result = (state: DeploymentState, error?: FerryError): DeploymentResult => ({
    ...subject, host: deps.hostId, state, bytes: 0, timings,
    ...(state === 'ROLLED_BACK' ? { containerId: previous.id } : {}),
    ...(error ? { error: { code: error.code, message: error.message } } : {}),
  });
  const facts = switchFacts(label, previous.id, current?.running ? current.id : undefined, true);
  const entry = await deps.journal.begin({ ...subject, kind: 'rollback', host: deps.hostId, bytes: 0 }, []);
  emit('rollback.started', { reason: 'manual rollback' });
  await entry.enter('ROLLING_BACK', { event: 'rollback.started', ...(current ? { previousContainerId: current.id } : {}), switch: facts });
  let error: FerryError;
  try {
    await containers.start(previous.id);
    const upstream = await upstreamOf(containers, previous.id, label.route.port);
    const checked = await checkRouted({ network: 'bridge', route: label.route, ...(label.health ? { health: label.health } : {}) }, previous.id, upstream, {
      containers, stabilityWindowMs: deps.stabilityWindowMs, scrub: new Scrubber({}), emit,
      progress: (healthCheck) => entry.note({ healthCheck }),
    });
    if (checked.ok) {
      let switched;
      try {
        switched = await commitSwitch({ containers, proxy, log, crashAt: deps.crashAt }, entry, service, facts);
      } catch (err) {
        await entry.close();
        throw new SwitchIncomplete(asFerryError(err));
      }
      // The service's image name points at what runs again, as after any deployment.
      if (subject.image !== subject.imageId) await images.tag(subject.imageId, subject.image).catch((err: unknown) => log.warn({ err }, 'tagging the image failed'));
      timings.rollback = since(started);
      timings.total = timings.rollback;
      await entry.note({ event: 'rollback.completed', containerId: previous.id });
      const done = result('ROLLED_BACK');
      await entry.finish(done);
      emit('deployment.switched', {
        ...(switched.from ? { from: switched.from } : {}), to: switched.to.name, address: switched.to.address, strategy: 'start-first', openSessions: switched.openSessions, drainMs: label.drainMs,
      });
      emit('rollback.completed', { restoredContainerId: previous.id, durationMs: timings.rollback });
      log.info({ timings }, 'manual rollback (start-first) completed');
      return done;
    }
    error = checked.error;
  } catch (err) {
    if (err instanceof SwitchIncomplete) throw err;
    error = asFerryError(err);
  }
  // The previous container had no request: it is stopped again and stays the previous one.
  await abandonSwitch({ containers, proxy }, service, facts).catch((err: unknown) => log.error({ err }, 'stopping the previous container again failed'));
  const failed = new FerryError('FERRY_ERR_ROLLBACK_FAILED', { message: `Rollback of ${service} failed: ${error.message}; ${current ? 'the current version still serves' : 'nothing serves'}`, cause: error });
  timings.total = since(started);
  await entry.finish(result('FAILED', failed));
  emit('deployment.failed', { code: failed.code, reason: failed.message, state: 'FAILED' });
  log.warn({ code: error.code }, 'manual rollback (start-first) failed');
  throw failure(result('FAILED', failed));
}
