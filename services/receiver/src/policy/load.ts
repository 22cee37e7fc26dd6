import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { FerryError } from '@ferry/protocol';
import { DEFAULT_POLICY, ENGINE_SOCKETS, type Policy } from './policy.ts';

/** What the receiver's environment says about its policy; config.ts validates the basic shapes. */
export interface PolicySources {
  /** FERRY_POLICY_FILE: a JSON document with the fields of PolicyFileSchema. */
  file?: string;
  /** FERRY_POLICY_IMAGES, …: comma lists that replace the file's value. */
  images?: string;
  bindSources?: string;
  capabilities?: string;
  hostNetwork?: string;
  /** DOCKER_HOST: a unix socket named there is protected like the default ones. */
  dockerHost?: string;
}

const CLEAN_ABSOLUTE = /^\/(?:(?!\.\.?(?:\/|$))[^/\0,]+(?:\/(?!\.\.?(?:\/|$))[^/\0,]+)*)?$/;
const glob = z.string().regex(/^[A-Za-z0-9._\-/:*?]+$/, 'an image repository glob: letters, digits, . _ - / : and the wildcards * ** ?');
const path = z.string().regex(CLEAN_ABSOLUTE, 'an absolute path without "..", "." or a trailing slash');
const capability = z.string().regex(/^(?:CAP_)?[A-Za-z_]{2,32}$/, 'a capability name, e.g. NET_ADMIN').transform((c) => c.toUpperCase().replace(/^CAP_/, ''));

/** The policy file; every field optional, unknown fields refused so a typo never loosens nothing in silence. */
export const PolicyFileSchema = z.strictObject({
  images: z.array(glob).optional(),
  bindSources: z.array(path).optional(),
  capabilities: z.array(capability).optional(),
  devices: z.array(path).optional(),
  hostNetwork: z.boolean().optional(),
  privileged: z.boolean().optional(),
  hostPid: z.boolean().optional(),
  hostIpc: z.boolean().optional(),
  dockerSocket: z.boolean().optional(),
  rootBind: z.boolean().optional(),
  seccompUnconfined: z.boolean().optional(),
  apparmorUnconfined: z.boolean().optional(),
});
export type PolicyFile = z.infer<typeof PolicyFileSchema>;

/**
 * Builds the receiver's policy: defaults, then the file, then the environment lists. Every
 * problem is reported at once in a FERRY_ERR_CONFIG, the way the rest of the config is.
 */
export function loadPolicy(sources: PolicySources): Readonly<Policy> {
  const problems: string[] = [];
  let file: PolicyFile = {};
  if (sources.file !== undefined) {
    const parsed = readPolicyFile(sources.file);
    if (parsed.ok) file = parsed.value;
    else problems.push(...parsed.problems);
  }
  const list = <T>(variable: string, raw: string | undefined, item: z.ZodType<T>): T[] | undefined => {
    if (raw === undefined) return undefined;
    const values = raw.split(',').map((v) => v.trim()).filter((v) => v !== '');
    const result = z.array(item).safeParse(values);
    if (result.success) return result.data;
    for (const issue of result.error.issues) problems.push(`${variable}: "${String(values[Number(issue.path[0])])}": ${issue.message}`);
    return undefined;
  };
  const images = list('FERRY_POLICY_IMAGES', sources.images, glob);
  const bindSources = list('FERRY_POLICY_BIND_SOURCES', sources.bindSources, path);
  const capabilities = list('FERRY_POLICY_CAPABILITIES', sources.capabilities, capability);
  let hostNetwork: boolean | undefined;
  if (sources.hostNetwork !== undefined) {
    if (sources.hostNetwork === 'true' || sources.hostNetwork === 'false') hostNetwork = sources.hostNetwork === 'true';
    else problems.push('FERRY_POLICY_HOST_NETWORK: true or false');
  }
  if (problems.length > 0) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `Invalid receiver policy:\n  - ${problems.join('\n  - ')}` });
  }
  const dockerSocket = /^unix:\/\/(\/.+)$/.exec(sources.dockerHost ?? '')?.[1];
  const merged: Policy = {
    ...DEFAULT_POLICY,
    ...file,
    ...(images ? { images } : {}),
    ...(bindSources ? { bindSources } : {}),
    ...(capabilities ? { capabilities } : {}),
    ...(hostNetwork !== undefined ? { hostNetwork } : {}),
    protectedSockets: dockerSocket && !ENGINE_SOCKETS.includes(dockerSocket) ? [...ENGINE_SOCKETS, dockerSocket] : ENGINE_SOCKETS,
  };
  return Object.freeze(merged);
}

function readPolicyFile(file: string): { ok: true; value: PolicyFile } | { ok: false; problems: string[] } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return { ok: false, problems: [`FERRY_POLICY_FILE: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`] };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, problems: [`FERRY_POLICY_FILE: ${file} is not JSON (${(err as Error).message})`] };
  }
  const result = PolicyFileSchema.safeParse(json);
  if (result.success) return { ok: true, value: result.data };
  return { ok: false, problems: result.error.issues.map((issue) => `FERRY_POLICY_FILE ${file}: ${issue.path.join('.') || '(root)'}: ${issue.message}`) };
}
