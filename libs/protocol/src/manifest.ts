import { z } from 'zod';
import { DIGEST_PATTERN, IMAGE_ID_PATTERN, SERVICE_NAME_PATTERN, prototypeKeyPaths } from './wire.ts';
import { ReleaseRefSchema } from './release.ts';
import { CanarySchema, DrainSchema, RouteSchema, UPDATE_STRATEGIES } from './route.ts';

export const COMPRESSIONS = ['zstd', 'gzip', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Docker's reference grammar without digests: `[domain[:port]/]path[:tag]`. */
const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
export const IMAGE_REF_PATTERN = new RegExp(
  `^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?/)?${PATH_COMPONENT}(?:/${PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$`,
);

const HEALTH_TIMINGS = {
  intervalMs: z.int().min(50).max(60_000).default(1000),
  timeoutMs: z.int().min(50).max(60_000).default(2000),
  retries: z.int().min(1).max(1000).default(30),
  startPeriodMs: z.int().min(0).max(600_000).default(0),
};

export const HttpHealthCheckSchema = z.strictObject({
  type: z.literal('http'),
  /** Probed by the receiver, so it is an address as seen from the target host. */
  url: z.url({ protocol: /^https?$/ }),
  expectStatus: z.int().min(100).max(599).optional(),
  ...HEALTH_TIMINGS,
});

export const TcpHealthCheckSchema = z.strictObject({
  type: z.literal('tcp'),
  /** Connected to by the receiver, as seen from the target host. */
  host: z.string().min(1).max(253).regex(/^[A-Za-z0-9.:_-]+$/, 'a host name or IP address'),
  port: z.int().min(1).max(65535),
  ...HEALTH_TIMINGS,
});

/** The image's own HEALTHCHECK, run by Docker; the timings override the image's. */
export const CmdHealthCheckSchema = z.strictObject({
  type: z.literal('cmd'),
  ...HEALTH_TIMINGS,
});

export const HealthCheckSchema = z.discriminatedUnion('type', [HttpHealthCheckSchema, TcpHealthCheckSchema, CmdHealthCheckSchema]);
export type HealthCheck = z.infer<typeof HealthCheckSchema>;

export const RESTART_POLICIES = ['no', 'unless-stopped', 'on-failure', 'always'] as const;

/** `[hostIp:]hostPort:containerPort[/tcp|udp]`, as `docker run -p` takes it (no ranges). */
export interface PortMapping {
  hostIp?: string;
  hostPort: number;
  containerPort: number;
  protocol: 'tcp' | 'udp';
}

const PORT_SPEC = /^(?:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):)?(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/;

export function parsePort(spec: string): PortMapping | undefined {
  const match = PORT_SPEC.exec(spec);
  if (!match) return undefined;
  const hostPort = Number(match[2]);
  const containerPort = Number(match[3]);
  if (hostPort < 1 || hostPort > 65535 || containerPort < 1 || containerPort > 65535) return undefined;
  return {
    ...(match[1] ? { hostIp: match[1].replace(/^\[|\]$/g, '') } : {}),
    hostPort, containerPort, protocol: match[4] === 'udp' ? 'udp' : 'tcp',
  };
}

/** A bind mount when `source` is an absolute host path, else a named volume. */
export interface VolumeMount {
  kind: 'bind' | 'volume';
  source: string;
  target: string;
  readOnly: boolean;
}

const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
// Absolute, no `.`/`..` segments, no doubled or trailing slash: the policy compares paths as
// written, so only one spelling of each path may pass.
const CLEAN_PATH = /^\/(?:(?!\.\.?(?:\/|$))[^/:\0,]+(?:\/(?!\.\.?(?:\/|$))[^/:\0,]+)*)?$/;

export function parseVolume(spec: string): VolumeMount | undefined {
  const parts = spec.split(':');
  if (parts.length < 2 || parts.length > 3) return undefined;
  const [source = '', target = '', mode] = parts;
  if (mode !== undefined && mode !== 'ro' && mode !== 'rw') return undefined;
  if (!CLEAN_PATH.test(target) || target === '/') return undefined;
  const kind = source.startsWith('/') ? 'bind' : 'volume';
  if (kind === 'bind' ? !CLEAN_PATH.test(source) : !VOLUME_NAME.test(source)) return undefined;
  return { kind, source, target, readOnly: mode === 'ro' };
}

/** `host[:container[:rwm]]`, as `docker run --device` takes it. */
export interface DeviceMapping {
  host: string;
  container: string;
  permissions: string;
}

export function parseDevice(spec: string): DeviceMapping | undefined {
  const [host = '', container = host, permissions = 'rwm', ...rest] = spec.split(':');
  if (rest.length > 0 || !CLEAN_PATH.test(host) || !CLEAN_PATH.test(container) || !/^[rwm]{1,3}$/.test(permissions)) return undefined;
  return { host, container, permissions };
}

/** `1073741824`, `512m`, `1g`… as `docker run --memory` takes it; undefined when malformed. */
export function parseMemory(spec: string): number | undefined {
  const match = /^(\d{1,15})([bkmg]?)$/i.exec(spec);
  if (!match) return undefined;
  const unit = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(match[2] ?? '').toLowerCase()] ?? 1;
  return Number(match[1]) * unit;
}

/** Docker's own lower bound on a memory limit. */
export const MIN_MEMORY_BYTES = 6 * 1024 * 1024;

/** Linux capability names as Docker takes them: `NET_ADMIN` or `CAP_NET_ADMIN`, any case; `ALL`. */
export function normalizeCapability(name: string): string {
  return name.toUpperCase().replace(/^CAP_/, '');
}

const CAPABILITY = /^(?:CAP_)?[A-Z_]{2,32}$/i;
/** The security options a manifest may carry: the ones a policy judges, and harmless hardening. */
const SECURITY_OPT = /^(?:seccomp=unconfined|apparmor=[A-Za-z0-9_.-]{1,64}|no-new-privileges(?::(?:true|false))?)$/;

const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$/;

const withParser = (parser: (spec: string) => unknown, message: string) =>
  z.string().max(4096).refine((value) => parser(value) !== undefined, message);

export const ServiceSpecSchema = z.strictObject({
  name: z.string().regex(SERVICE_NAME_PATTERN, 'lowercase letters, digits, "-" and "_", at most 63'),
  env: z.record(z.string().regex(ENV_NAME, 'an environment variable name'), z.string()).default({}),
  network: z.enum(['host', 'bridge', 'none']).default('bridge'),
  /** Published ports; only with the bridge network (checked below). */
  ports: z.array(withParser(parsePort, '[hostIp:]hostPort:containerPort[/tcp|udp]')).max(64).optional(),
  volumes: z.array(withParser(parseVolume, 'source:target[:ro|rw], source a volume name or an absolute path without ".." (target absolute, not "/")')).max(64).optional(),
  restart: z.enum(RESTART_POLICIES).optional(),
  // Keys are checked here rather than by a key schema so that each problem names its label.
  labels: z.record(z.string(), z.string().max(4096)).superRefine((labels, ctx) => {
    for (const key of Object.keys(labels)) {
      if (!LABEL_KEY.test(key)) ctx.addIssue({ code: 'custom', path: [key], message: 'a label key: letters, digits, ".", "_", "/" and "-", at most 255' });
      else if (key.startsWith('ferry.')) ctx.addIssue({ code: 'custom', path: [key], message: 'the "ferry." prefix is reserved for the labels the receiver sets' });
    }
  }).optional(),
  memory: withParser((v) => { const bytes = parseMemory(v); return bytes !== undefined && bytes >= MIN_MEMORY_BYTES ? bytes : undefined; }, 'bytes or a number with b, k, m or g, at least 6m').optional(),
  cpus: z.number().positive().max(1024).optional(),
  command: z.array(z.string().max(4096)).max(256).optional(),
  entrypoint: z.array(z.string().max(4096)).max(256).optional(),
  user: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$/, 'user[:group], names or numeric ids').optional(),
  /** Extra Linux capabilities (`docker run --cap-add`); the receiver's policy decides which. */
  capAdd: z.array(z.string().regex(CAPABILITY, 'a capability name, e.g. NET_ADMIN')).max(64).optional(),
  // Asked for rather than granted: the receiver's policy refuses each unless its operator allowed it.
  privileged: z.boolean().optional(),
  pid: z.enum(['private', 'host']).optional(),
  ipc: z.enum(['private', 'shareable', 'host']).optional(),
  devices: z.array(withParser(parseDevice, '/dev/host[:/dev/container[:rwm]]')).max(64).optional(),
  securityOpt: z.array(z.string().regex(SECURITY_OPT, 'seccomp=unconfined, apparmor=PROFILE or no-new-privileges[:true|false]')).max(16).optional(),
  health: HealthCheckSchema.optional(),
  /** Traffic through the host's proxy (route.ts); the container runs on the bridge network. */
  route: RouteSchema.optional(),
  /** Default: start-first with a route, stop-first without one. */
  strategy: z.enum(UPDATE_STRATEGIES).optional(),
  /** Milliseconds the old container keeps its in-flight requests after a start-first switch. */
  drain: DrainSchema.optional(),
  canary: CanarySchema.optional(),
}).refine((spec) => spec.network === 'bridge' || (spec.ports ?? []).length === 0, {
  path: ['ports'], message: 'ports are published only with the bridge network',
}).refine((spec) => spec.route === undefined || spec.network === 'bridge', {
  path: ['route'], message: 'a routed service runs on the bridge network (the proxy reaches its port on loopback)',
}).refine((spec) => spec.strategy !== 'start-first' || spec.route !== undefined, {
  path: ['strategy'], message: 'start-first needs a route: two containers can run at once only when the proxy chooses between them',
}).refine((spec) => spec.canary === undefined || effectiveStrategy(spec) === 'start-first', {
  path: ['canary'], message: 'a canary needs a route and the start-first strategy',
}).refine((spec) => spec.drain === undefined || spec.route !== undefined, {
  path: ['drain'], message: 'drain applies to a routed service',
});

/** The update strategy a service gets: its own, else start-first when it has a route. */
export function effectiveStrategy(spec: { route?: unknown; strategy?: 'stop-first' | 'start-first' | undefined }): 'stop-first' | 'start-first' {
  return spec.strategy ?? (spec.route !== undefined ? 'start-first' : 'stop-first');
}
export type ServiceSpec = z.infer<typeof ServiceSpecSchema>;

export const ManifestSchema = z.strictObject({
  schema: z.literal('ferry.manifest/v1'),
  deploymentId: z.uuid(),
  createdAt: z.iso.datetime(),
  image: z.strictObject({
    /** The reference as pushed; the receiver tags the loaded image with it and runs it by this name. */
    ref: z.string().min(1).max(255).regex(IMAGE_REF_PATTERN, '[registry[:port]/]name[:tag], lowercase name, no digest'),
    id: z.string().regex(IMAGE_ID_PATTERN, 'sha256:<64 hex>'),
    diffIds: z.array(z.string().regex(IMAGE_ID_PATTERN, 'sha256:<64 hex>')).min(1),
  }),
  package: z.strictObject({
    format: z.literal('docker-archive'),
    compression: z.enum(COMPRESSIONS),
    size: z.int().min(1),
    digest: z.string().regex(DIGEST_PATTERN, 'blake3:<64 hex>'),
    /**
     * Layers (diff ids) whose entries the archive leaves out because the target said it has them
     * (docs/protocol.md, "Layer negotiation"); the receiver loads such a package only if it still does.
     */
    omittedLayers: z.array(z.string().regex(IMAGE_ID_PATTERN, 'sha256:<64 hex>')).min(1).optional(),
  }),
  service: ServiceSpecSchema,
  /**
   * A release signed before the one the host runs is refused (a replayed old release must not
   * downgrade a host) unless the release itself says, under the signature, that it is a rollback.
   */
  rollback: z.boolean().optional(),
  /** The release this deployment belongs to (release.ts): the receiver journals and retains it under that id. */
  release: ReleaseRefSchema.optional(),
}).refine((m) => (m.package.omittedLayers ?? []).every((id) => m.image.diffIds.includes(id)), {
  path: ['package', 'omittedLayers'], message: 'every omitted layer must be one of image.diffIds',
});
export type Manifest = z.infer<typeof ManifestSchema>;

/**
 * The package's size and digest, known only once the last byte is made: a streamed upload
 * (docs/protocol.md §10.6) starts with a manifest without them and signs them at the end.
 */
export const PackageSealSchema = z.strictObject({
  size: z.int().min(1),
  digest: z.string().regex(DIGEST_PATTERN, 'blake3:<64 hex>'),
});
export type PackageSeal = z.infer<typeof PackageSealSchema>;

/** A manifest whose `package` has no `size` and `digest` yet: the body that opens a stream. */
export type DeferredManifestInput = Omit<ManifestInput, 'package'> & { package: Omit<ManifestInput['package'], 'size' | 'digest'> };

/**
 * The opening manifest of a stream, checked as a full manifest would be, with a placeholder seal
 * that {@link sealManifest} replaces.
 */
export function parseDeferredManifest(value: unknown): ManifestResult {
  if (typeof value !== 'object' || value === null || typeof (value as { package?: unknown }).package !== 'object' || (value as { package?: unknown }).package === null) {
    return parseManifest(value);
  }
  const pkg = (value as { package: Record<string, unknown> }).package;
  const problems = ['size', 'digest'].filter((key) => key in pkg).map((key) => `package.${key}: comes with the stream's deploy call, not in its opening manifest`);
  const result = parseManifest({ ...value, package: { ...pkg, ...PLACEHOLDER_SEAL } });
  if (problems.length > 0) return { ok: false, problems: [...problems, ...(result.ok ? [] : result.problems)] };
  return result;
}

const PLACEHOLDER_SEAL: PackageSeal = { size: 1, digest: `blake3:${'0'.repeat(64)}` };

/** The manifest a stream's bytes were signed for: its opening manifest with the signed seal. */
export function sealManifest(opening: Manifest, seal: PackageSeal): Manifest {
  return { ...opening, package: { ...opening.package, size: seal.size, digest: seal.digest } };
}
/** What a client writes: fields with defaults may be left out. */
export type ManifestInput = z.input<typeof ManifestSchema>;

export type ManifestResult = { ok: true; manifest: Manifest } | { ok: false; problems: string[] };

export function parseManifest(value: unknown): ManifestResult {
  // The schema would drop such a key without a word: an env variable asked for would be missing.
  const refused = prototypeKeyPaths(value).map((path) => `${path.join('.').slice(0, 200)}: "__proto__" is not allowed as a name`);
  const result = ManifestSchema.safeParse(value);
  if (result.success && refused.length === 0) return { ok: true, manifest: result.data };
  return {
    ok: false,
    problems: [...refused, ...(result.success ? [] : result.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`))],
  };
}
