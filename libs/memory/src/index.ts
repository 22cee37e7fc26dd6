export { BUFFER_BUDGET_BYTES, BufferBudget, scavenge, scavengePeriodically } from './gc.ts';
