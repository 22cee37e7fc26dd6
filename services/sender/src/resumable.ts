import { isFerryError, type ErrorCode } from '@ferry/protocol';
import { ResumableClient, type ResumableTarget, type UploadOutcome } from './receiver-client.ts';
import { DEFAULT_BACKOFF, isCallCut, retry, systemClock, type Clock, type RetryOptions } from './retry.ts';

/** Parts are fsynced one by one; this size keeps a lost part cheap and the fsyncs few. */
export const DEFAULT_PART_BYTES = 32 * 1024 ** 2;

export interface ResumableOptions extends ResumableTarget {
  manifestJson: string;
  packagePath: string;
  packageSize: number;
  partBytes?: number;
  /**
   * Failures in a row of one call (a part: without progress) before giving up; default
   * DEFAULT_BACKOFF.attempts, whose pauses are taken between them. The upload's own resuming, inside
   * any retry of the whole push.
   */
  attempts?: number;
  clock?: Clock;
  /** Package bytes acknowledged or handed to the socket so far. */
  onProgress?: (sent: number) => void;
  /** Every package byte is acknowledged by the receiver. */
  onSent?: () => void;
  /** The session is open and the receiver holds `offset` bytes of it (more than 0 = a resume). */
  onSession?: (offset: number) => void;
}

/** Answers after which asking the receiver where the upload stands, and going on, makes sense. */
const RETRYABLE: readonly ErrorCode[] = [
  'FERRY_ERR_RECEIVER_UNREACHABLE', 'FERRY_ERR_OFFSET_MISMATCH', 'FERRY_ERR_UPLOAD_BUSY',
  'FERRY_ERR_CHECKSUM_MISMATCH', 'FERRY_ERR_DISK_FULL', 'FERRY_ERR_INTERNAL', 'FERRY_ERR_BAD_RESPONSE',
  // A restarted receiver refuses what was signed before it started; every retry is signed anew.
  'FERRY_ERR_REPLAY',
];

const resumes = (err: unknown): boolean => isFerryError(err) && RETRYABLE.includes(err.code);

/**
 * A push over the resumable protocol: create the session, send parts from the acknowledged
 * offset, and after any failure ask the receiver (HEAD) where to go on from, until every byte is
 * acknowledged; then deploy, sending the call again when it was cut short (the receiver answers
 * a repeat from its record of the deployment id, or runs again a deployment its restart cut
 * short). Each call — the create, a part until the receiver holds it, the deploy — gives up after
 * `attempts` failures in a row, pausing between them as retry.ts says.
 */
export async function uploadResumable(options: ResumableOptions): Promise<UploadOutcome & { uploadId: string; retries: number }> {
  const client = options.client ? options.client.resumable() : new ResumableClient(options);
  const partBytes = options.partBytes ?? DEFAULT_PART_BYTES;
  const policy = { ...DEFAULT_BACKOFF, attempts: options.attempts ?? DEFAULT_BACKOFF.attempts };
  const clock = options.clock ?? systemClock;
  let retries = 0;
  let bodyBytes = 0;
  const retrying = (shouldRetry: (err: unknown) => boolean): RetryOptions => ({ policy, clock, shouldRetry, onRetry: () => { retries += 1; } });

  const { uploadId, offset: opened } = await retry(() => client.create(options.manifestJson), retrying(resumes));
  let offset = opened;
  options.onSession?.(offset);
  while (offset < options.packageSize) {
    const start = offset;
    let ask = false;
    let final = false;
    // Failures in a row while the receiver does not hold more than `start`: progress starts the count again.
    await retry(async () => {
      if (ask) {
        offset = (await client.head(uploadId)).offset;
        ask = false;
        options.onProgress?.(offset);
        // A lost answer: the part was taken after all.
        if (offset > start) return;
      }
      const from = offset;
      const length = Math.min(partBytes, options.packageSize - from);
      bodyBytes += length;
      try {
        offset = (await client.patchFile(uploadId, options.packagePath, from, length, (sent) => options.onProgress?.(from + sent))).offset;
      } catch (err) {
        // The whole-file check refused the package: the upload is gone, and a retry cannot help.
        final = isFerryError(err, 'FERRY_ERR_CHECKSUM_MISMATCH') && from + length === options.packageSize && err.details?.offset === undefined;
        ask = true;
        throw err;
      }
    }, retrying((err) => !final && resumes(err)));
    options.onProgress?.(offset);
  }
  options.onSent?.();
  // Only a call cut short is worth sending again — a lost answer, a receiver restarted meanwhile,
  // which runs again the deployment its stop cut short (§10.4); a deployment's own failure, or a
  // refusal before it, is this attempt's outcome.
  const result = await retry(() => client.deploy(uploadId), retrying(isCallCut));
  return { result, bodyBytes, uploadId, retries };
}
