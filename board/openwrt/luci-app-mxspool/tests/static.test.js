'use strict';
/*
 * Checks that need no daemon: the menu points at views that exist, the ACL
 * grants exactly the commands the views run (driven through every button
 * with made-up answers), and the Settings page has one field of the right
 * kind for every option mxspool's parser knows, and none it does not.
 * The checks against the real daemon's output are in views.test.js.
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const drive = require('./drive.js');

const APP = drive.luci.APP;
const json = rel => JSON.parse(fs.readFileSync(path.join(APP, rel), 'utf8'));
const ACL = 'root/usr/share/rpcd/acl.d/luci-app-mxspool.json';
const MENU = 'root/usr/share/luci/menu.d/luci-app-mxspool.json';

/* Answers that make every button of every view appear. */
const MADE_UP = {
	'/usr/sbin/mxspool queue list --json --limit 50 -c /etc/config/mxspool': { code: 0, stdout: JSON.stringify({ total: 1, next: null, messages: [{ id: '6921A3F200001', arrival: 1000, age: 60, sender: 's@x.test', recipients: ['a@example.com'], size: 10, destination: 'mail.example.com:25', attempts: 1, next_attempt: 1100, last_error: 'x' }] }) },
	'/usr/sbin/mxspool queue stats --json -c /etc/config/mxspool': { code: 0, stdout: JSON.stringify({ accepted: 1, rejected: {}, delivered: 0, deferred: 1, bounced: 0, queued: 1, oldest_age: 60, spool_bytes: 10, max_spool_size: 1024, guard_refusals: 0, callahead: {}, unreachable: {}, uptime: 5 }) },
	'/usr/sbin/mxspool queue *': { code: 0, stdout: 'ok\n', stderr: '' },
	'/usr/sbin/mxspool dnscheck *': { code: 0, stdout: JSON.stringify({ domain: 'example.com', hostname: 'mx2.test', mx: [], problems: [], advice: [], error: null }) },
	'/sbin/logread -e mxspool': { code: 0, stdout: 'a line\n' }
};

/* rpcd matches a command line against ACL keys with fnmatch. */
function fnmatch(pattern, s) {
	const re = new RegExp('^' + pattern.split('*').map(p => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
	return re.test(s);
}

test('the menu points at views that exist, under Services', () => {
	const menu = json(MENU);
	const root = menu['admin/services/mxspool'];
	assert.ok(root, 'admin/services/mxspool');
	assert.equal(root.title, 'Mail relay');
	assert.deepEqual(root.depends.acl, ['luci-app-mxspool']);
	const views = Object.entries(menu).filter(([, e]) => e.action.type === 'view');
	assert.deepEqual(views.map(([k]) => k).sort(), ['dnscheck', 'log', 'queue', 'settings'].map(t => `admin/services/mxspool/${t}`).sort());
	for (const [key, e] of views) {
		const file = path.join(drive.luci.RESOURCES, 'view', e.action.path + '.js');
		assert.ok(fs.existsSync(file), `${key} -> ${file}`);
	}
});

test('the ACL grants exactly the commands the views run, and uci mxspool and firewall only', async () => {
	const acl = json(ACL)['luci-app-mxspool'];
	assert.deepEqual(Object.keys(json(ACL)), ['luci-app-mxspool']);
	for (const side of ['read', 'write']) {
		assert.deepEqual(Object.keys(acl[side]).sort(), ['file', 'ubus', 'uci'], side);
		/* firewall: the Settings page's checkbox for the port 25 rule
		 * (rpcd grants uci access per config, never per section). */
		assert.deepEqual(acl[side].uci, ['mxspool', 'firewall'], `${side}: uci`);
		assert.deepEqual(JSON.parse(JSON.stringify(acl[side].ubus)), { file: ['exec'] }, `${side}: ubus`);
		for (const [cmd, perms] of Object.entries(acl[side].file))
			assert.deepEqual(perms, ['exec'], `${side}: ${cmd}`);
	}
	const granted = Object.keys(acl.read.file).concat(Object.keys(acl.write.file));
	const runs = await drive.everyCommand(MADE_UP, ['example.com', 'example.org']);
	assert.ok(runs.length > 0);
	for (const r of runs) {
		const by = granted.filter(p => fnmatch(p, r.line));
		assert.ok(by.length > 0, `${r.view} runs '${r.line}', which the ACL does not grant`);
		/* A wildcard stands for one whole argument (an id, a domain, a host). */
		for (const p of by) {
			const pw = p.split(' ');
			assert.equal(pw.length, 1 + r.args.length, `${p} vs ${r.line}`);
			pw.forEach((w, i) => assert.ok(w === '*' || w === [r.cmd].concat(r.args)[i], `${p} vs ${r.line}`));
		}
	}
	for (const p of granted)
		assert.ok(runs.some(r => fnmatch(p, r.line)), `the ACL grants '${p}', which no view runs`);
	/* The UCI configs: read what the views read, write what their forms
	 * write, nothing more. */
	const union = o => [...new Set(Object.values(o).flat())].sort();
	assert.deepEqual(acl.read.uci.slice().sort(), union(runs.uciRead), 'uci read vs the configs the views read');
	assert.deepEqual(acl.write.uci.slice().sort(), union(runs.uciWrite), 'uci write vs the configs the views\' forms write');
	assert.deepEqual(runs.uciWrite['view/mxspool/settings'], ['firewall', 'mxspool']);
	/* rpcd grants an executable alone with any arguments: never that. And
	 * every mxspool line ends with the config, so a '*' cannot replace it. */
	for (const p of granted) {
		assert.ok(p.includes(' '), `${p}: an executable without its arguments`);
		if (p.startsWith('/usr/sbin/mxspool '))
			assert.ok(p.endsWith(' -c /etc/config/mxspool'), `${p} does not end with -c /etc/config/mxspool`);
	}
	/* Only changes need write access. */
	for (const p of Object.keys(acl.read.file))
		assert.ok(!/ (flush|delete|bounce|retag)\b/.test(p), `${p} changes the queue: it belongs under write`);
	/* The queue actions: the exact CLI syntax of the contract. */
	const lines = runs.map(r => r.line);
	for (const want of ['/usr/sbin/mxspool queue flush -c /etc/config/mxspool', '/usr/sbin/mxspool queue flush example.com -c /etc/config/mxspool',
		'/usr/sbin/mxspool queue delete 6921A3F200001 -c /etc/config/mxspool', '/usr/sbin/mxspool queue bounce 6921A3F200001 -c /etc/config/mxspool',
		'/usr/sbin/mxspool queue retag example.com mail.example.com:2525 -c /etc/config/mxspool',
		'/usr/sbin/mxspool dnscheck example.com --json -c /etc/config/mxspool', '/usr/sbin/mxspool dnscheck example.org --json -c /etc/config/mxspool'])
		assert.ok(lines.includes(want), `no view ran '${want}':\n${lines.join('\n')}`);
});

test('the queue page polls, and asks before every change', async () => {
	drive.luci.reset();
	Object.assign(drive.luci.env.exec, MADE_UP);
	drive.luci.env.uci = { mxspool: { domain: [{ name: 'example.com' }] } };
	const { node } = await drive.open('view/mxspool/queue');
	const polls = drive.luci.env.recorded.polls;
	assert.equal(polls.length, 1);
	assert.ok(polls[0].interval >= 2 && polls[0].interval <= 10, `poll every ${polls[0].interval}s`);
	const before = drive.luci.env.recorded.execs.length;
	await node.button('Delete').click();
	await drive.settle();
	assert.equal(drive.luci.env.recorded.execs.length, before, 'nothing runs before the confirmation');
	const modal = drive.luci.env.recorded.modals.pop();
	await modal.node.button('Cancel').click();
	assert.equal(drive.luci.env.recorded.execs.length, before, 'Cancel runs nothing');
});

test('the settings page has a field for every option mxspool knows, and no other', async () => {
	const form = await drive.settingsForm();
	assert.equal(form.config, 'mxspool');
	const known = drive.parserOptions();
	assert.deepEqual(Object.keys(form.sections).sort(), ['domain', 'mxspool']);
	assert.equal(form.sections.mxspool.sectionname, 'main');
	assert.equal(form.sections.domain.kind, 'GridSection');
	for (const [type, opts] of Object.entries(known)) {
		const s = form.sections[type];
		const declared = s.options.map(o => o.option);
		assert.equal(new Set(declared).size, declared.length, `${type}: an option declared twice`);
		const all = opts.single.concat(opts.list);
		for (const name of all)
			assert.ok(declared.includes(name), `${type}: no field for '${name}'`);
		for (const name of declared)
			assert.ok(all.includes(name), `${type}: '${name}' is not an option mxspool accepts`);
		for (const o of s.options) {
			const isList = opts.list.includes(o.option);
			assert.equal(o.kind === 'DynamicList', isList, `${type}.${o.option} is a ${o.kind}`);
			assert.ok(o.tab, `${type}.${o.option} is in a tab`);
		}
	}
	const domainTabs = Object.fromEntries(form.sections.domain.options.map(o => [o.option, o.tab]));
	for (const o of ['offline_address', 'expect_greeting', 'tls_pin'])
		assert.equal(domainTabs[o], 'guard', `${o} is on the guard tab`);
	const enabled = form.sections.mxspool.options.find(o => o.option === 'enabled');
	assert.equal(enabled.kind, 'Flag');
});

/* The Settings page with the firewall config FW (null: none), as drive.settingsForm. */
async function settingsWithFirewall(fw) {
	drive.luci.reset();
	drive.luci.env.uci = { mxspool: { mxspool: [{ '.name': 'main' }], domain: [] } };
	if (fw)
		drive.luci.env.uci.firewall = fw;
	const { node } = await drive.open('view/mxspool/settings');
	return { node, maps: drive.luci.env.recorded.maps };
}

const DHCP_RULE = { '.name': 'cfg0', name: 'Allow-DHCP-Renew', src: 'wan', proto: 'udp', dest_port: '68', target: 'ACCEPT' };

test('the settings page has a checkbox for the firewall rule of board/openwrt/files/mxspool.defaults, and only for it', async () => {
	/* The rule as the uci-defaults script adds it. */
	const defaults = fs.readFileSync(path.join(APP, '../files/mxspool.defaults'), 'utf8');
	const section = /^RULE=(\S+)$/m.exec(defaults)[1];
	const name = /^NAME=(\S+)$/m.exec(defaults)[1];
	assert.match(defaults, new RegExp(`uci -q set "firewall\\.\\$RULE\\.enabled=0"`), 'the rule is added disabled');
	const { node, maps } = await settingsWithFirewall({ rule: [DHCP_RULE, { '.name': section, name, enabled: '0' }] });
	assert.deepEqual(maps.map(m => m.config), ['mxspool', 'firewall']);
	const fw = maps[1];
	assert.equal(fw.sections.length, 1);
	const s = fw.sections[0];
	assert.equal(s.kind, 'TypedSection');
	assert.equal(s.sectiontype, 'rule');
	assert.equal(s.addremove, false, 'the page neither adds nor deletes firewall rules');
	assert.equal(s.filter(section), true, 'the package\'s rule is shown');
	assert.equal(s.filter('cfg0'), false, 'no other rule is shown');
	assert.deepEqual(s.options.map(o => [o.option, o.kind, o.default, o.rmempty]), [['enabled', 'Flag', '1', false]],
		'one checkbox, for the enabled option only, always written (absent would mean enabled)');
	assert.equal(node.byId('mxspool-no-fw-rule'), null);

	/* A rule of that name the owner made (an anonymous section) counts too. */
	const anon = await settingsWithFirewall({ rule: [DHCP_RULE, { '.name': 'cfg1', name, enabled: '0' }] });
	assert.equal(anon.maps[1].sections[0].filter('cfg1'), true);
	assert.equal(anon.maps[1].sections[0].filter('cfg0'), false);
});

test('the settings page without the firewall rule says how to add it; without a firewall, says nothing', async () => {
	const gone = await settingsWithFirewall({ rule: [DHCP_RULE] });
	assert.deepEqual(gone.maps.map(m => m.config), ['mxspool'], 'no firewall form without the rule');
	assert.match(gone.node.byId('mxspool-no-fw-rule').textContent, /Allow-SMTP-mxspool.*port 25/);
	const none = await settingsWithFirewall(null);
	assert.deepEqual(none.maps.map(m => m.config), ['mxspool']);
	assert.equal(none.node.byId('mxspool-no-fw-rule'), null);
});

test('every example on the settings page passes its own validation, and bad values do not', async () => {
	const form = await drive.settingsForm();
	for (const s of Object.values(form.sections))
		for (const o of s.options) {
			if (o.kind === 'Flag' || o.kind === 'ListValue') {
				if (o.kind === 'ListValue')
					assert.ok(o.values.some(([k]) => k === o.default), `${o.option}: default ${o.default} is a choice`);
				continue;
			}
			assert.ok(o.placeholder, `${s.sectiontype}.${o.option} has an example`);
			s.setForm('x', { user: ['alice'], tls_cert: '/etc/mxspool/cert.pem', name: 'example.com' });
			assert.equal(o.check('x', o.placeholder), true, `${o.option}: its example ${o.placeholder}`);
			s.setForm('x', { user: [], tls_cert: '' });
			assert.equal(o.check('x', ''), true, `${o.option}: empty (unset) is allowed`);
			assert.notEqual(o.check('x', 'no such value!'), true, `${o.option}: a wrong value is refused`);
		}
});

test('every JSON file of the app parses', () => {
	const walk = dir => fs.readdirSync(dir, { withFileTypes: true }).flatMap(d =>
		d.isDirectory() ? walk(path.join(dir, d.name)) : [path.join(dir, d.name)]);
	const files = walk(path.join(APP, 'root')).filter(f => f.endsWith('.json'));
	assert.equal(files.length, 3);
	for (const f of files)
		JSON.parse(fs.readFileSync(f, 'utf8'));
	assert.deepEqual(json('root/usr/share/ucitrack/luci-app-mxspool.json'), { config: 'mxspool', init: 'mxspool' });
});

test('every view is a strict LuCI class whose requires all have stand-ins', () => {
	const dir = path.join(drive.luci.RESOURCES, 'view');
	const files = ['mxspool/settings', 'mxspool/queue', 'mxspool/dnscheck', 'mxspool/log', 'status/include/70_mxspool'];
	for (const f of files) {
		const src = fs.readFileSync(path.join(dir, f + '.js'), 'utf8');
		assert.match(src, /^'use strict';\n/, `${f} starts with 'use strict'`);
		assert.ok(drive.luci.requires(src).length > 0, `${f} requires something`);
		drive.luci.load('view/' + f);
	}
});

test('the views read no field the made-up answers lack', async () => {
	const runs = await drive.everyCommand(MADE_UP, ['example.com']);
	assert.deepEqual(runs.missing, []);
});
