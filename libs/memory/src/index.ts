export { BUFFER_BUDGET_BYTES, BufferBudget, HEAP_BUDGET_BYTES, scavenge, scavengePeriodically } from './gc.ts';
