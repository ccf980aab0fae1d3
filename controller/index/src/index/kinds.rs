//! How each projected kind goes into the index: one [`Projection`] per kind, so watches
//! (one generic runner), topology files and tests all apply, delete and reset the same
//! way.

use super::*;

/// One kind of watched object, projected.
pub trait Projection: Sized {
    /// What names an object besides its namespace and name: the workload kind for the
    /// four workload watches, nothing for the others.
    type Scope: Copy;
    /// `(namespace, name)`; a Namespace's namespace is empty.
    fn key(&self) -> (&str, &str);
    /// The key of every object of the kind in the index.
    fn keys(index: &Index, scope: Self::Scope) -> Vec<(Arc<str>, Arc<str>)>;
    fn apply(self, index: &mut Index);
    fn delete(index: &mut Index, scope: Self::Scope, namespace: &str, name: &str);
}

impl Index {
    /// Adds or replaces a watched object.
    pub fn apply<P: Projection>(&mut self, object: P) {
        object.apply(self);
    }

    pub fn delete<P: Projection>(&mut self, scope: P::Scope, namespace: &str, name: &str) {
        P::delete(self, scope, namespace, name);
    }

    /// Replaces every object of the kind (what a (re)list ends with). Objects still
    /// there are applied over, not deleted first: a pod keeps its IPs' history.
    pub fn reset<P: Projection>(&mut self, scope: P::Scope, all: Vec<P>) {
        let keep: BTreeSet<(&str, &str)> = all.iter().map(P::key).collect();
        let gone: Vec<(Arc<str>, Arc<str>)> = P::keys(self, scope)
            .into_iter()
            .filter(|(ns, name)| !keep.contains(&(&**ns, &**name)))
            .collect();
        drop(keep);
        for (ns, name) in gone {
            P::delete(self, scope, &ns, &name);
        }
        for object in all {
            object.apply(self);
        }
    }

    /// `(namespace, name)` of every object a namespace's `names` lists.
    fn all_names<'a, I: Iterator<Item = &'a Arc<str>>>(
        &'a self,
        names: impl Fn(&'a NsState) -> I,
    ) -> Vec<(Arc<str>, Arc<str>)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, s)| names(s).map(move |n| (ns.clone(), n.clone())))
            .collect()
    }
}

/// Adds (or removes) the hosts of a ServiceEntry or VirtualService, resolved in its
/// namespace as Istio resolves config hosts, to the host table.
fn config_hosts(
    index: &mut Index,
    kind: DefKind,
    ns: &Arc<str>,
    name: &Arc<str>,
    hosts: &[String],
    add: bool,
) {
    let def = host_def(kind, ns, name);
    for h in hosts {
        let h = host::resolve_config_host(h, ns, &index.config.cluster_domain);
        if add {
            index.hosts.add(&h, def.clone());
        } else {
            index.hosts.remove(&h, &def);
        }
    }
}

impl Projection for Namespace {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        ("", &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index
            .namespaces
            .iter()
            .filter(|(_, s)| s.object.is_some())
            .map(|(n, _)| (Arc::from(""), n.clone()))
            .collect()
    }

    fn apply(self, index: &mut Index) {
        let ns = self;
        let name = ns.name.clone();
        index.ns_mut(&name).object = Some(ns);
    }

    fn delete(index: &mut Index, (): (), _: &str, name: &str) {
        if let Some(state) = index.namespaces.get_mut(name) {
            state.object = None;
        }
    }
}

impl Projection for Pod {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.pods.keys())
    }

    fn apply(self, index: &mut Index) {
        let mut pod = self;
        pod.labels = match index.pod_labels.get(&pod.labels) {
            Some(shared) => shared.clone(),
            None => {
                index.pod_labels.insert(pod.labels.clone());
                pod.labels
            }
        };
        let strings = &mut index.pod_strings;
        intern(strings, &mut pod.namespace);
        intern(strings, &mut pod.service_account);
        if let Some(owner) = &mut pod.owner {
            intern(strings, &mut owner.kind);
            intern(strings, &mut owner.name);
        }
        let pod = Arc::new(pod);
        let old = index
            .ns_mut(&pod.namespace)
            .pods
            .insert(pod.name.clone(), pod.clone());
        if let Some(old) = &old {
            index.release_ips(old, &pod.ips, pod.host_network);
        }
        if pod.host_network {
            for ip in &pod.ips {
                let held_before = old
                    .as_ref()
                    .is_some_and(|o| o.host_network && o.ips.contains(ip));
                if !held_before {
                    let n = index.host_network_ips.entry(*ip).or_default();
                    *n = n.saturating_add(1);
                }
            }
            return;
        }
        let from = pod.start_time_unix_s.unwrap_or(index.clock);
        for ip in &pod.ips {
            // Most IPs only ever have one holder: no room for more until needed.
            let holders = index
                .ips
                .entry(*ip)
                .or_insert_with(|| Vec::with_capacity(1));
            match holders.last_mut() {
                // Same pod, still holding: refresh its projection.
                Some(h) if h.until.is_none() && same_pod(&h.pod, &pod) => {
                    h.pod = pod.clone();
                    continue;
                }
                // Another pod held it: the new one takes over from its start.
                Some(h) => {
                    let from = from.max(h.from);
                    if h.until.is_none_or(|u| u > from) {
                        h.until = Some(from);
                    }
                    holders.push(Holder {
                        pod: pod.clone(),
                        from,
                        until: None,
                    });
                }
                None => holders.push(Holder {
                    pod: pod.clone(),
                    from,
                    until: None,
                }),
            }
            let keep = index.config.ip_history.max(1);
            if holders.len() > keep {
                let excess = holders.len().saturating_sub(keep);
                holders.drain(..excess);
            }
        }
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        let Some(old) = index
            .namespaces
            .get_mut(namespace)
            .and_then(|s| s.pods.remove(name))
        else {
            return;
        };
        index.release_ips(&old, &[], false);
    }
}

/// Replaces `s` with the set's equal string, or adds it.
fn intern(set: &mut hashbrown::HashSet<Arc<str>>, s: &mut Arc<str>) {
    match set.get(s) {
        Some(shared) => *s = shared.clone(),
        None => {
            set.insert(s.clone());
        }
    }
}

impl Projection for ReplicaSet {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.replica_sets.keys())
    }

    fn apply(self, index: &mut Index) {
        let rs = self;
        let name = rs.name.clone();
        index
            .ns_mut(&rs.namespace.clone())
            .replica_sets
            .insert(name, rs);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        if let Some(s) = index.namespaces.get_mut(namespace) {
            s.replica_sets.remove(name);
        }
    }
}

impl Projection for Job {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.jobs.keys())
    }

    fn apply(self, index: &mut Index) {
        let job = self;
        let name = job.name.clone();
        index.ns_mut(&job.namespace.clone()).jobs.insert(name, job);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        if let Some(s) = index.namespaces.get_mut(namespace) {
            s.jobs.remove(name);
        }
    }
}

impl Projection for WorkloadObject {
    type Scope = WorkloadKind;

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, kind: WorkloadKind) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| {
            s.workloads
                .keys()
                .filter(move |(k, _)| *k == kind)
                .map(|(_, n)| n)
        })
    }

    /// A Deployment, StatefulSet, DaemonSet or CronJob.
    fn apply(self, index: &mut Index) {
        let workload = self;
        let key = (workload.kind, workload.name.clone());
        index
            .ns_mut(&workload.namespace.clone())
            .workloads
            .insert(key, workload);
    }

    fn delete(index: &mut Index, kind: WorkloadKind, namespace: &str, name: &str) {
        if let Some(s) = index.namespaces.get_mut(namespace) {
            s.workloads.remove(&(kind, Arc::from(name)));
        }
    }
}

impl Projection for Service {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.services.keys())
    }

    fn apply(self, index: &mut Index) {
        let svc = self;
        Service::delete(index, (), &svc.namespace.clone(), &svc.name.clone());
        let def = host_def(DefKind::Service, &svc.namespace, &svc.name);
        index
            .hosts
            .add(&svc.host(&index.config.cluster_domain), def.clone());
        index
            .ns_mut(&def.namespace)
            .services
            .insert(svc.name.clone(), svc);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        let Some(old) = index
            .namespaces
            .get_mut(namespace)
            .and_then(|s| s.services.remove(name))
        else {
            return;
        };
        let def = host_def(DefKind::Service, &old.namespace, &old.name);
        index
            .hosts
            .remove(&old.host(&index.config.cluster_domain), &def);
    }
}

impl Projection for ServiceEntry {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.service_entries.keys())
    }

    fn apply(self, index: &mut Index) {
        let se = self;
        ServiceEntry::delete(index, (), &se.namespace.clone(), &se.name.clone());
        config_hosts(
            index,
            DefKind::ServiceEntry,
            &se.namespace,
            &se.name,
            &se.hosts,
            true,
        );
        index
            .ns_mut(&se.namespace.clone())
            .service_entries
            .insert(se.name.clone(), se);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        let Some(old) = index
            .namespaces
            .get_mut(namespace)
            .and_then(|s| s.service_entries.remove(name))
        else {
            return;
        };
        config_hosts(
            index,
            DefKind::ServiceEntry,
            &old.namespace,
            &old.name,
            &old.hosts,
            false,
        );
    }
}

impl Projection for VirtualService {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.virtual_services.keys())
    }

    fn apply(self, index: &mut Index) {
        let vs = self;
        VirtualService::delete(index, (), &vs.namespace.clone(), &vs.name.clone());
        // A VS bound only to gateways is not what sidecars route by.
        if vs.applies_to_mesh() {
            config_hosts(
                index,
                DefKind::VirtualService,
                &vs.namespace,
                &vs.name,
                &vs.hosts,
                true,
            );
        }
        index
            .ns_mut(&vs.namespace.clone())
            .virtual_services
            .insert(vs.name.clone(), vs);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        let Some(old) = index
            .namespaces
            .get_mut(namespace)
            .and_then(|s| s.virtual_services.remove(name))
        else {
            return;
        };
        config_hosts(
            index,
            DefKind::VirtualService,
            &old.namespace,
            &old.name,
            &old.hosts,
            false,
        );
    }
}

impl Projection for SidecarObject {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.sidecars.keys())
    }

    /// Applies a Sidecar; one of ours restores its workload's deps (merge: max
    /// last-seen), so applying our Sidecars before the first write makes restarts safe.
    /// Only users' Sidecars are kept: what is desired reads no other (ours are rendered
    /// from the index's deps, and the writer keeps what it compares), and at 100k pods
    /// ours are 20k label maps and selectors held for nothing.
    fn apply(self, index: &mut Index) {
        let mut sidecar = self;
        let name = sidecar.name.clone();
        if sidecar.is_ours() {
            // A user's Sidecar of that name that became ours is gone.
            if let Some(ns) = index.namespaces.get_mut(&*sidecar.namespace) {
                ns.sidecars.remove(&*name);
            }
            if let Some(restored) = sidecar.restored.take() {
                index.deps_listed(&restored.workload, restored.deps.keys());
                let deps = restored
                    .deps
                    .into_iter()
                    .map(|(h, t)| (Arc::<str>::from(h), t))
                    .collect::<Vec<_>>();
                index.merge_deps(&restored.workload, deps);
            }
            return;
        }
        // Users' carry nothing to restore (a claim by annotation alone is not ours).
        sidecar.restored = None;
        index
            .ns_mut(&sidecar.namespace.clone())
            .sidecars
            .insert(name, sidecar);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        if let Some(s) = index.namespaces.get_mut(namespace) {
            s.sidecars.remove(name);
        }
    }
}

impl Projection for DestinationRule {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.destination_rules.keys())
    }

    fn apply(self, index: &mut Index) {
        let rule = self;
        let name = rule.name.clone();
        index
            .ns_mut(&rule.namespace.clone())
            .destination_rules
            .insert(name, rule);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        if let Some(s) = index.namespaces.get_mut(namespace) {
            s.destination_rules.remove(name);
        }
    }
}

impl Projection for AuthorizationPolicy {
    type Scope = ();

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn keys(index: &Index, (): ()) -> Vec<(Arc<str>, Arc<str>)> {
        index.all_names(|s| s.authorization_policies.keys())
    }

    fn apply(self, index: &mut Index) {
        let policy = self;
        let name = policy.name.clone();
        index
            .ns_mut(&policy.namespace.clone())
            .authorization_policies
            .insert(name, policy);
    }

    fn delete(index: &mut Index, (): (), namespace: &str, name: &str) {
        if let Some(s) = index.namespaces.get_mut(namespace) {
            s.authorization_policies.remove(name);
        }
    }
}
