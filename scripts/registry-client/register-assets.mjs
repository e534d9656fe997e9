// Registers assets on an OpenLedger node with @polkadot/api, the way a contributor's own
// tooling would, then reads them back through storage queries and the runtime API, and checks
// that the client can recompute the DataNet's commitment itself.
//
//   node register-assets.mjs ADAPTER_FOLDER [ws://127.0.0.1:9944]
//   (or: npm run register -- ADAPTER_FOLDER [ws://127.0.0.1:9944])
//
// ADAPTER_FOLDER holds the adapter Bob registers, in PEFT's format (adapter_config.json,
// adapter_model.safetensors); its content hash is computed here as workers check it, and its
// rank and target modules are read from its adapter_config.json (README, adapters registered on
// chain).
//
// Uses the dev accounts: Alice owns a curated DataNet with Charlie as curator, Bob contributes
// two records (Charlie accepts one and rejects the other), Dave pays the DataNet a reward that
// Bob claims, Alice registers a prompt and publishes a second version of it, Alice (sudo, as
// governance) registers a base model and Bob an adapter of it trained on the DataNet, and Charlie
// registers an MCP tool. Prints a JSON summary; exits non-zero, with the reason, if anything is
// not as expected.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApiPromise, Keyring, WsProvider } from '@polkadot/api';
import { compactAddLength, stringToU8a, u8aConcat } from '@polkadot/util';
import { blake2AsHex, blake2AsU8a, cryptoWaitReady } from '@polkadot/util-crypto';

const adapterFolder = process.argv[2];
const url = process.argv[3] ?? 'ws://127.0.0.1:9944';
if (!adapterFolder || adapterFolder.includes('://')) {
  console.error('usage: node register-assets.mjs ADAPTER_FOLDER [ws://127.0.0.1:9944]');
  process.exit(2);
}
const OPEN = 10n ** 18n;

/** The chain's names of the projections a PEFT adapter may target, in the order it wants. */
const MODULES = [
  ['q_proj', 'Q'], ['k_proj', 'K'], ['v_proj', 'V'], ['o_proj', 'O'],
  ['gate_proj', 'Gate'], ['up_proj', 'Up'], ['down_proj', 'Down'],
];

/** What the PEFT adapter in `folder` declares: its rank and the chain's names of its target
 * modules (in the chain's order), from its adapter_config.json. */
function adapterDeclaration(folder) {
  const config = JSON.parse(readFileSync(join(folder, 'adapter_config.json'), 'utf8'));
  check(Number.isInteger(config.r) && config.r > 0, 'adapter_config.json: r');
  check(
    Object.keys(config.rank_pattern ?? {}).length === 0,
    'adapter_config.json: rank_pattern (the chain declares one rank)',
  );
  const targets = [config.target_modules ?? []].flat().map((t) => String(t).split('.').pop());
  check(targets.length > 0, 'adapter_config.json: target_modules');
  for (const target of targets) {
    check(MODULES.some(([peft]) => peft === target), `adapter_config.json: target ${target}`);
  }
  const modules = MODULES.filter(([peft]) => targets.includes(peft)).map(([, chain]) => chain);
  return { rank: config.r, modules };
}

/** The content hash of the PEFT adapter in `folder`, as the chain names an adapter's files. */
function adapterContentHash(folder) {
  const parts = ['adapter_config.json', 'adapter_model.safetensors'].map((file) =>
    u8aConcat(compactAddLength(stringToU8a(file)), blake2AsU8a(readFileSync(join(folder, file)))),
  );
  return blake2AsHex(u8aConcat(...parts));
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

/** Submits `tx` signed by `signer`, waits until it is in a block, and returns its events.
 * Rejects with the decoded module error if the call failed. */
function send(api, tx, signer) {
  return new Promise((resolve, reject) => {
    let unsubscribe = () => {};
    tx.signAndSend(signer, ({ status, events, dispatchError }) => {
      if (dispatchError) {
        unsubscribe();
        if (dispatchError.isModule) {
          const { section, name, docs } = api.registry.findMetaError(dispatchError.asModule);
          reject(new Error(`${section}.${name}: ${docs.join(' ')}`));
        } else {
          reject(new Error(dispatchError.toString()));
        }
      } else if (status.isInBlock) {
        unsubscribe();
        resolve(events.map(({ event }) => event));
      }
    })
      .then((u) => {
        unsubscribe = u;
      })
      .catch(reject);
  });
}

/** The data of the first event `section.method` among `events`. */
function eventData(events, section, method) {
  const event = events.find((e) => e.section === section && e.method === method);
  check(event, `event ${section}.${method}`);
  return event.data;
}

async function main() {
  await cryptoWaitReady();
  // (Read first: a folder that cannot be read stops the script before anything is on chain.)
  const adapterHash = adapterContentHash(adapterFolder);
  const declared = adapterDeclaration(adapterFolder);
  const api = await ApiPromise.create({ provider: new WsProvider(url), noInitWarn: true });
  const keyring = new Keyring({ type: 'sr25519', ss58Format: 42 });
  const [alice, bob, charlie, dave] = ['//Alice', '//Bob', '//Charlie', '//Dave'].map((uri) =>
    keyring.addFromUri(uri),
  );

  // The chain advertises its token, so wallets show OPEN.
  const properties = api.registry.getChainProperties();
  check(properties.tokenSymbol.unwrap()[0].toString() === 'OPEN', 'token symbol OPEN');
  check(properties.tokenDecimals.unwrap()[0].toNumber() === 18, '18 decimals');

  // ---- A curated DataNet, with Charlie as curator ----
  const created = await send(
    api,
    api.tx.dataNets.createDatanet(
      'medical-qa',
      'ipfs://bafy-description',
      blake2AsHex('description of medical-qa'),
      'CC-BY-4.0',
      'Curated',
      [charlie.address],
      100_000_000, // Perbill: 10% of a rejected record's deposit is forfeited
    ),
    alice,
  );
  const datanet = eventData(created, 'dataNets', 'DataNetCreated').datanet.toNumber();

  // ---- Bob contributes two records; Charlie accepts one and rejects the other ----
  const contents = ['question: what is a LoRA adapter?', 'spam spam spam'];
  const records = [];
  for (const content of contents) {
    const events = await send(
      api,
      api.tx.dataNets.contribute(
        datanet,
        blake2AsHex(content),
        `ipfs://${blake2AsHex(content).slice(2, 18)}`,
        content.length,
        JSON.stringify({ lang: 'en' }),
      ),
      bob,
    );
    records.push(eventData(events, 'dataNets', 'RecordContributed').record.toBigInt());
  }
  const accepted = await send(api, api.tx.dataNets.acceptRecord(records[0]), charlie);
  const acceptedEvent = eventData(accepted, 'dataNets', 'RecordAccepted');
  const rejected = await send(api, api.tx.dataNets.rejectRecord(records[1]), charlie);
  const forfeited = eventData(rejected, 'dataNets', 'RecordRejected').forfeited.toBigInt();
  check(forfeited > 0n, 'a rejected record forfeits part of its deposit');

  // ---- Dave rewards the DataNet; Bob, its only contributor, claims it all ----
  await send(api, api.tx.dataNets.reward(datanet, OPEN), dave);
  const claimable = (await api.call.dataNetsApi.claimable(datanet, bob.address)).toBigInt();
  check(claimable === OPEN, `Bob can claim the whole reward (${claimable})`);
  const claimed = await send(api, api.tx.dataNets.claimRewards(datanet), bob);
  check(eventData(claimed, 'dataNets', 'RewardsClaimed').amount.toBigInt() === OPEN, 'claimed');

  // ---- A prompt with two versions ----
  const text = 'Answer {{topic}} questions from the medical DataNet, in plain words.';
  const registered = await send(
    api,
    api.tx.prompts.registerPrompt('medical-assistant', { Inline: text }, OPEN / 100n),
    alice,
  );
  const prompt = eventData(registered, 'prompts', 'PromptRegistered').prompt.toBigInt();
  await send(
    api,
    api.tx.prompts.publishVersion(
      prompt,
      { External: { uri: 'ipfs://bafy-prompt-v2', hash: blake2AsHex('v2') } },
      OPEN / 50n,
    ),
    alice,
  );

  // ---- A base model (governance: sudo on the dev chain) and an adapter trained on the DataNet ----
  const modelEvents = await send(
    api,
    api.tx.sudo.sudo(
      api.tx.adapters.registerBaseModel(
        'SmolLM2-135M-Instruct',
        'llama',
        '0xb179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
        'Q4_1',
        8192,
        'Apache-2.0',
      ),
    ),
    alice,
  );
  const baseModel = eventData(modelEvents, 'adapters', 'BaseModelRegistered').baseModel.toNumber();
  // adapterHash: BLAKE2b-256 of the SCALE encoding of each file's name and BLAKE2b-256 (what
  // `openledger-worker content-hash --adapter FOLDER` prints), computed above.
  const adapterEvents = await send(
    api,
    api.tx.adapters.registerAdapter(
      'medical-qa-lora',
      baseModel,
      adapterHash,
      declared.rank,
      declared.modules,
      'ipfs://bafy-adapter',
      OPEN / 1000n,
      [[datanet, 1_000_000_000]], // trained on the DataNet alone: 100%
    ),
    bob,
  );
  const adapter = eventData(adapterEvents, 'adapters', 'AdapterRegistered').adapter.toBigInt();

  // ---- An MCP tool: its endpoint and the hash of its descriptor (the MCP tool definition) ----
  const descriptor = JSON.stringify({
    name: 'pubmed_search',
    description: 'Search PubMed abstracts',
    inputSchema: { type: 'object', properties: { query: { type: 'string' } } },
  });
  const toolEvents = await send(
    api,
    api.tx.tools.registerTool('pubmed-search', 'https://tools.example/mcp', blake2AsHex(descriptor), OPEN / 200n),
    charlie,
  );
  const tool = eventData(toolEvents, 'tools', 'ToolRegistered').tool.toBigInt();

  // ---- Read everything back ----
  const info = (await api.query.dataNets.dataNets(datanet)).unwrap();
  check(info.owner.toString() === alice.address, 'DataNet owner');
  check(info.name.toUtf8() === 'medical-qa', 'DataNet name');
  check(info.curation.isCurated, 'curated');
  check(info.version.toNumber() === 1 && info.pending.toNumber() === 0, 'one accepted, none pending');

  const page = await api.call.dataNetsApi.acceptedRecords(datanet, 0, 100);
  check(page.length === 1, 'one accepted record');
  const [recordId, record, commitmentAfter] = page[0];
  check(recordId.toBigInt() === records[0], 'the accepted record id');
  check(record.contributor.toString() === bob.address, 'contributor');
  check(record.contentHash.toHex() === blake2AsHex(contents[0]), 'content hash');

  // The client recomputes the commitment: blake2_256(SCALE(previous, index, id, content hash)).
  const preimage = api.createType('([u8; 32], u64, u64, [u8; 32])', [
    new Uint8Array(32),
    0,
    records[0],
    record.contentHash,
  ]);
  const recomputed = blake2AsU8a(preimage.toU8a(), 256);
  const [version, commitment] = (await api.call.dataNetsApi.commitment(datanet, null)).unwrap();
  check(version.toNumber() === 1, 'commitment version');
  check(commitment.toHex() === api.createType('[u8; 32]', recomputed).toHex(), 'commitment recomputed');
  check(commitmentAfter.toHex() === commitment.toHex(), 'commitment stored with the record');
  check(acceptedEvent.commitment.toHex() === commitment.toHex(), 'commitment in the event');

  const mine = await api.call.dataNetsApi.contributorRecords(bob.address, null, 100);
  check(mine.length === 1 && mine[0][0].toBigInt() === records[0], "Bob's records");
  check((await api.query.dataNets.records(records[1])).isNone, 'the rejected record is gone');

  const promptInfo = (await api.query.prompts.prompts(prompt)).unwrap();
  check(promptInfo.owner.toString() === alice.address && promptInfo.latest.toNumber() === 2, 'prompt');
  const v1 = (await api.query.prompts.versions(prompt, 1)).unwrap();
  check(v1.template.isInline && v1.template.asInline.toUtf8() === text, 'prompt v1 text');
  check(v1.contentHash.toHex() === blake2AsHex(text), 'prompt v1 content hash');
  const viaApi = (await api.call.promptsApi.promptVersion(prompt, 1)).unwrap();
  check(viaApi.contentHash.toHex() === blake2AsHex(text), 'promptsApi.promptVersion');
  const promptViaApi = (await api.call.promptsApi.prompt(prompt)).unwrap();
  check(promptViaApi.latest.toNumber() === 2, 'promptsApi.prompt');
  const v2 = (await api.query.prompts.versions(prompt, 2)).unwrap();
  check(v2.template.isExternal && v2.pricePerUse.toBigInt() === OPEN / 50n, 'prompt v2');

  const adapterInfo = (await api.call.adaptersApi.adapter(adapter)).unwrap();
  check(adapterInfo.owner.toString() === bob.address, 'adapter owner');
  check(adapterInfo.baseModel.toNumber() === baseModel, 'adapter base model');
  check(adapterInfo.contentHash.toHex() === adapterHash, 'adapter content hash');
  check(adapterInfo.rank.toNumber() === declared.rank, 'adapter rank');
  check(
    adapterInfo.targetModules.map((m) => m.type).join(',') === declared.modules.join(','),
    'target modules',
  );
  check(adapterInfo.datanets[0][0].toNumber() === datanet, 'trained on the DataNet');
  check(adapterInfo.datanets[0][1].toNumber() === 1_000_000_000, 'with weight 100%');
  const model = (await api.call.adaptersApi.baseModel(baseModel)).unwrap();
  check(model.architecture.toUtf8() === 'llama' && model.enabled.isTrue, 'base model');

  const toolInfo = (await api.call.toolsApi.tool(tool)).unwrap();
  check(toolInfo.owner.toString() === charlie.address, 'tool owner');
  check(toolInfo.endpoint.toUtf8() === 'https://tools.example/mcp', 'tool endpoint');
  check(toolInfo.descriptorHash.toHex() === blake2AsHex(descriptor), 'tool descriptor hash');
  check(toolInfo.pricePerCall.toBigInt() === OPEN / 200n && toolInfo.paused.isFalse, 'tool price');
  const toolHolds = await api.query.balances.holds(charlie.address);
  check(
    toolHolds.some((h) => h.id.isTools && h.amount.toBigInt() === toolInfo.deposit.toBigInt()),
    'the tool deposit is held from Charlie',
  );

  // Deposits are held, not spent.
  const holds = await api.query.balances.holds(alice.address);
  check(holds.length >= 2, 'Alice holds deposits for her DataNet and prompt');

  console.log(
    JSON.stringify({
      datanet,
      records: records.map(String),
      version: version.toNumber(),
      commitment: commitment.toHex(),
      forfeited: forfeited.toString(),
      prompt: prompt.toString(),
      promptVersions: promptInfo.latest.toNumber(),
      baseModel,
      adapter: adapter.toString(),
      tool: tool.toString(),
    }),
  );
  await api.disconnect();
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error.message ?? error);
    process.exit(1);
  },
);
