/**
 * Test hook only: FERRY_TEST_CRASH_AT names a step of a deployment at which the receiver kills
 * itself with SIGKILL, so that tests can prove what a restart makes of the journal. It is read
 * from the environment at start-up and cannot be set by any request. `during-drain`: a start-first
 * switch, once the proxy sends requests to the new container and the old one drains.
 */
export const CRASH_POINTS = ['after-stop-old', 'before-start-new', 'during-validate', 'during-drain'] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];
