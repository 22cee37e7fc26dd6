import type { ContainerInfo, ContainerRunner } from '@ferry/docker';
import { FAILURE_LIMITS, plainLine, type FailedContainer, type HealthCheck, type HealthReport, type ProbeResult } from '@ferry/protocol';

/**
 * Env values shorter than this stay in the text: replacing "1", "on" or "dev" wherever they occur
 * would garble every line, and such values are no secrets.
 */
const REDACT_MIN_CHARS = 4;

const EXITED: ReadonlySet<string> = new Set(['exited', 'dead', 'restarting']);

/**
 * Makes text a container wrote fit to keep and show (docs/protocol.md §11.2): one plain line, no
 * terminal sequences or control characters, cut to a bound, and no value of the manifest's env —
 * a program that prints its configuration must not put a secret into the journal, an answer or an
 * event. Each value becomes `${NAME}`.
 */
export class Scrubber {
  readonly #values: [string, string][];

  constructor(env: Readonly<Record<string, string>>) {
    const values: [string, string][] = [];
    for (const [name, value] of Object.entries(env)) {
      // A log line holds one line of a value that has several, and holds it as plainLine left it.
      for (const part of [value, ...value.split(/\r?\n/)].map((v) => plainLine(v).trim())) {
        if (part.length >= REDACT_MIN_CHARS) values.push([part, `\${${name}}`]);
      }
    }
    // The longest first: a value that holds another is replaced whole.
    this.#values = values.sort((a, b) => b[0].length - a[0].length);
  }

  line(text: string, maxChars: number): string {
    let out = plainLine(text);
    for (const [value, name] of this.#values) if (out.includes(value)) out = out.split(value).join(name);
    return plainLine(out, maxChars);
  }

  probes(probes: readonly ProbeResult[]): ProbeResult[] {
    return probes.slice(-FAILURE_LIMITS.probes).map((p) => (p.error === undefined ? { ...p } : { ...p, error: this.line(p.error, FAILURE_LIMITS.probeErrorChars) }));
  }
}

/**
 * True while the new container runs as started: not exited, and not restarted by its restart
 * policy (a crashed container with `unless-stopped` shows `running` again, or `restarting`).
 */
export function stillUp(info: ContainerInfo | undefined): boolean {
  return info !== undefined && info.running && info.status !== 'restarting' && info.restarts === 0;
}

/**
 * The new container as the engine sees it now, with its newest log lines scrubbed; read before the
 * rollback removes it. Undefined when the engine has no such container or cannot say.
 */
export async function failedContainer(containers: ContainerRunner, containerId: string, scrub: Scrubber): Promise<FailedContainer | undefined> {
  const info = await containers.inspect(containerId).catch(() => undefined);
  if (!info) return undefined;
  const lines = await containers.logs(containerId, FAILURE_LIMITS.logLines).catch(() => []);
  // Inspect's exit code holds while the container is down; one its restart policy started again
  // says 0, and the engine's events tell how its last run ended. None for one never started.
  const exitCode = EXITED.has(info.status) ? info.exitCode
    : info.restarts > 0 ? await containers.lastExitCode(containerId).catch(() => undefined) : undefined;
  return {
    id: info.id, status: info.status, ...(exitCode !== undefined ? { exitCode } : {}), restarts: info.restarts,
    logs: lines.slice(-FAILURE_LIMITS.logLines).map((text) => scrub.line(text, FAILURE_LIMITS.logLineChars)),
  };
}

export function healthReport(type: HealthCheck['type'], attempts: number, probes: readonly ProbeResult[], scrub: Scrubber): HealthReport {
  return { type, attempts, probes: scrub.probes(probes) };
}
