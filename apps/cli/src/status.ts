import { FerryError } from '@ferry/protocol';
import { ReceiverClient, type DeploymentRecord, loadSenderConfig } from '@ferry/sender';
import { parse, parseInteger } from './args.ts';
import { failureLines, fromRecord } from './failure.ts';
import { line, type Io } from './io.ts';
import { formatMs } from './progress.ts';
import { oneLine } from './terminal.ts';
import { registryStatus } from './registry.ts';

const TIMING_KEYS = ['receive', 'verify', 'load', 'deploy', 'health', 'rollback', 'total'] as const;

/** `ferry status`: what it does and takes is its help text, in help.ts. */
export async function statusCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    to: { type: 'string' }, service: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' },
  }, 1);
  const id = positionals[0];
  if (!values.to && id !== undefined && values.service === undefined && values.limit === undefined) return registryStatus(id, values.json === true, io);
  if (!values.to) throw new FerryError('FERRY_ERR_USAGE', { message: '--to URL is required (or "ferry status SERVICE" to ask the registry)' });
  if ((id === undefined) === (values.service === undefined)) {
    throw new FerryError('FERRY_ERR_USAGE', { message: 'give either a deployment ID or --service SERVICE (e.g. ferry status --to http://host:7701 --service web)' });
  }
  if (id !== undefined && values.limit !== undefined) throw new FerryError('FERRY_ERR_USAGE', { message: '--limit goes with --service' });
  const limit = parseInteger('limit', values.limit, 1, 500);
  const client = new ReceiverClient({ url: values.to, credentials: loadSenderConfig(io.env).credentials });

  if (id !== undefined) {
    const record = await client.deployment(id);
    line(io.stdout, values.json ? JSON.stringify(record) : describe(record, values.to));
    return 0;
  }
  const service = values.service ?? '';
  const records = await client.deployments({ service, ...(limit !== undefined ? { limit } : {}) });
  if (records.length === 0) {
    throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `The receiver at ${values.to} has no deployments of ${service}`, details: { service } });
  }
  line(io.stdout, values.json ? JSON.stringify({ deployments: records }) : table(records));
  return 0;
}

function describe(r: DeploymentRecord, url: string): string {
  const start = Date.parse(r.states[0]?.at ?? r.createdAt);
  const rows = [
    `deployment  ${r.deploymentId} (${r.kind})`,
    `service     ${r.service} on ${r.host}`,
    `image       ${r.image} (${shortId(r.imageId)})`,
    `state       ${r.state}${r.finishedAt ? ` at ${r.finishedAt}` : ''}`,
    'states',
    ...r.states.map((s) => `  ${s.state.padEnd(13)} ${s.at}  +${formatMs(Date.parse(s.at) - start)}`),
  ];
  const timings = TIMING_KEYS.filter((key) => r.timings?.[key] !== undefined).map((key) => `${key} ${formatMs(r.timings?.[key])}`);
  if (timings.length > 0) rows.push(`timings     ${timings.join(' · ')}`);
  if (r.containerId) rows.push(`container   ${shortId(r.containerId)}`);
  const lines = rows.map(oneLine);
  // A failure's report, as the push that ran it showed it.
  if (r.error) lines.push(...failureLines(fromRecord(r, url)));
  return lines.join('\n');
}

function table(records: DeploymentRecord[]): string {
  const rows = [['DEPLOYMENT', 'KIND', 'STATE', 'IMAGE', 'STARTED', 'TOTAL', 'ERROR']];
  for (const r of records) {
    rows.push([r.deploymentId, r.kind, r.state, r.image, r.createdAt, formatMs(r.timings?.total), r.error?.code ?? ''].map(oneLine));
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0))) ?? [];
  return rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

function shortId(id: string): string {
  return id.replace(/^sha256:/, '').slice(0, 12);
}
