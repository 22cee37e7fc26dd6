import { FerryError, SERVICE_NAME_PATTERN } from '@ferry/protocol';
import { ReceiverClient, loadDeploymentFile, loadSenderConfig } from '@ferry/sender';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { oneLine } from './terminal.ts';

/**
 * `ferry release promote|abort SERVICE`: ends a canary by hand on every host named by --to, or on
 * the service's targets in the deployment file. Each receiver's deployment answers its own call
 * with the outcome; this tells the canary what to do and reports where it was and was not running.
 */
export async function canaryCommand(command: 'promote' | 'abort', args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { to: { type: 'string', multiple: true }, file: { type: 'string', short: 'f' }, json: { type: 'boolean' } }, 1);
  const service = positionals[0];
  if (service === undefined || !SERVICE_NAME_PATTERN.test(service)) throw new FerryError('FERRY_ERR_USAGE', { message: `ferry release ${command}: name the service whose canary to ${command}, e.g. ferry release ${command} web --to URL` });
  if (values.to !== undefined && values.file !== undefined) throw new FerryError('FERRY_ERR_USAGE', { message: '--to or -f, not both: the hosts are the ones named, or the service\'s targets in the file' });
  let targets = values.to ?? [];
  if (targets.length === 0) {
    const file = values.file ?? 'ferry.yaml';
    const entry = (await loadDeploymentFile(file)).services[service];
    if (!entry) throw new FerryError('FERRY_ERR_USAGE', { message: `no service ${service} in ${file}` });
    targets = entry.targets;
  }
  const { credentials } = loadSenderConfig(io.env);
  const outcomes = await Promise.all(targets.map(async (url) => {
    try {
      await new ReceiverClient({ url, credentials }).canary(service, command);
      return { url, ok: true as const };
    } catch (err) {
      if (!(err instanceof FerryError)) throw err;
      return { url, ok: false as const, code: err.code, message: err.message };
    }
  }));
  if (values.json) line(io.stdout, JSON.stringify({ service, command, hosts: outcomes }));
  else {
    for (const o of outcomes) line(io.stdout, oneLine(o.ok ? `✔ ${o.url}: ${command === 'promote' ? 'promoting' : 'aborting'} the canary of ${service}` : `✘ ${o.url}: ${o.code === 'FERRY_ERR_NO_CANARY' ? `no canary of ${service} runs there` : o.message}`));
  }
  // Where no canary ran there was nothing to end: only a refusal or an unreachable host fails.
  return outcomes.every((o) => o.ok || o.code === 'FERRY_ERR_NO_CANARY') && outcomes.some((o) => o.ok) ? 0 : 1;
}
