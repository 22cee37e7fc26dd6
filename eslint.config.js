// Lint runs type-aware so that floating promises (the usual way a stream error goes unseen) fail CI.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/node_modules/**', 'coverage/**', '**/*.js', '!eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      'no-console': 'error',
      '@typescript-eslint/no-floating-promises': ['error', {
        // node:test runs what describe()/test() return; awaiting them is not how suites are written.
        allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'test', 'it', 'suite'] }],
      }],
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-restricted-imports': ['error', {
        // @ferry/sender/cli is an entry point of its own: the CLI without the library, so that
        // bin/main.ts loads a command's code only when that command runs.
        patterns: [{ group: ['@ferry/*/*', '!@ferry/sender/cli'], message: 'Import a lib through its package entry point only.' }],
      }],
    },
  },
  {
    files: ['eslint.config.js'],
    ...tseslint.configs.disableTypeChecked,
  },
);
