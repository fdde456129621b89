'use strict';
/*
 * Drives each view through everything a user can do (load, render, every
 * button, every confirmation, the polls) against given command answers,
 * and returns what it recorded. Shared by the tests and dump-settings.js.
 */

const path = require('node:path');
const fs = require('node:fs');
const luci = require('./luci-env.js');

const MXSPOOL = '/usr/sbin/mxspool';

/* Settles every pending promise chain (the views chain a few .then()s). */
async function settle() {
	for (let i = 0; i < 20; i++)
		await new Promise(r => setImmediate(r));
}

async function open(rel) {
	const v = luci.load(rel);
	const data = v.load ? await v.load() : undefined;
	const node = await v.render(data);
	await settle();
	return { v, node, data };
}

/* Clicks the confirming (last) button of the newest open modal. */
async function confirmModal() {
	const m = luci.env.recorded.modals.filter(x => x.open).pop();
	if (!m)
		throw new Error('no confirmation was asked');
	const buttons = m.node.buttons();
	await buttons[buttons.length - 1].click();
	await settle();
	return m;
}

/* Every command each view runs, with the daemon answering as ANSWERS
 * says and the configured DOMAINS. */
async function everyCommand(answers, domains) {
	const seen = [];
	seen.missing = [];
	/* the UCI configs the views read (uci.load, get, sections, a form.Map)
	 * and write (a form.Map), by view */
	seen.uciRead = {};
	seen.uciWrite = {};
	const run = async (rel, act) => {
		luci.reset();
		Object.assign(luci.env.exec, answers);
		luci.env.uci = {
			mxspool: { mxspool: [{ '.name': 'main' }], domain: domains.map((d, i) => ({ '.name': `d${i}`, name: d })) },
			firewall: { rule: [{ '.name': 'mxspool_smtp', name: 'Allow-SMTP-mxspool', enabled: '0' }] }
		};
		const page = await open(rel);
		if (act)
			await act(page);
		for (const p of luci.env.recorded.polls)
			await p.fn();
		await settle();
		for (const e of luci.env.recorded.execs)
			seen.push(Object.assign({ view: rel }, e));
		for (const m of luci.env.recorded.missing)
			seen.missing.push(`${rel}: ${m}`);
		const rec = luci.env.recorded;
		const maps = rec.maps.map(m => m.config);
		seen.uciRead[rel] = [...new Set(rec.uciLoads.concat(rec.uciReads, maps))].sort();
		seen.uciWrite[rel] = [...new Set(maps)].sort();
	};
	await run('view/mxspool/queue', async ({ node }) => {
		const q = node;
		await q.button('Retry all now').click(); await confirmModal();
		q.byId('mxspool-domain').value = domains[0];
		await q.button('Retry this domain now').click(); await confirmModal();
		q.byId('mxspool-retag').value = 'mail.example.com:2525';
		await q.button("Send this domain's mail there").click(); await confirmModal();
		await q.button('Delete').click(); await confirmModal();
		await q.button('Return').click(); await confirmModal();
	});
	await run('view/mxspool/dnscheck', async ({ node }) => {
		for (const b of node.buttons())
			await b.click();
		await settle();
	});
	await run('view/mxspool/log');
	await run('view/mxspool/settings');
	await run('view/status/include/70_mxspool');
	return seen;
}

/* The option lists mxspool's parser knows: its option tables
   (src/config/main_options.rs, src/config/domain_options.rs), where each
   entry is `name: "...",` then `form: Required|Single|List(...)`. */
function parserOptions() {
	const table = file => {
		const src = fs.readFileSync(path.join(luci.APP, '../../../src/config', file), 'utf8');
		const out = { single: [], list: [] };
		for (const m of src.matchAll(/name: "([a-z_]+)",\s*form: (List|Single|Required)\b/g))
			(m[2] === 'List' ? out.list : out.single).push(m[1]);
		if (!out.single.length)
			throw new Error(`no options found in src/config/${file}`);
		return out;
	};
	return { mxspool: table('main_options.rs'), domain: table('domain_options.rs') };
}

/* The settings form's sections and options, by section type. */
async function settingsForm() {
	luci.reset();
	luci.env.uci = { mxspool: { mxspool: [{ '.name': 'main' }], domain: [] } };
	await open('view/mxspool/settings');
	const [map] = luci.env.recorded.maps;
	const out = { config: map.config, sections: {} };
	for (const s of map.sections)
		out.sections[s.sectiontype] = s;
	return out;
}

module.exports = { open, settle, confirmModal, everyCommand, parserOptions, settingsForm, MXSPOOL, luci };
